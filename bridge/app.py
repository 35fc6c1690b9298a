"""The app factory: settings in, a ready APIFlask app out (no globals, so tests build their own)."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis
from apiflask import APIFlask
from apiflask.schema_adapters.marshmallow import parser as webargs_parser
from flask import Blueprint, Response, request
from flask_swagger_ui import get_swaggerui_blueprint
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.exc import DBAPIError

from bridge import metrics as bridge_metrics
from bridge import problems
from bridge.api import avatars, files, health, jobs, metrics, voices, whoami
from bridge.api.deps import SECURITY_SCHEME, BridgeState
from bridge.api.jsonbody import refuse_unreadable_values
from bridge.auth import TOKEN_TYPE, RedisReplayStore, ReplayStore
from bridge.bodies import MAX_FORM_FIELD_BYTES, MAX_FORM_PARTS, BodyGuard, BodyLimits, problem_handlers
from bridge.db import DB_UNAVAILABLE, Database
from bridge.keys import KeyStore, parse_env_keys
from bridge.links import LinkSigner, install_log_redaction, link_minter, load_link_secret, object_store
from bridge.logs import init_request_logging
from bridge.settings import BridgeSettings, get_settings
from bridge.storage import Storage
from bridge.tasks import make_celery
from engine import EngineSettings

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 1.0


def _version() -> str:
    try:
        return version("talking-head-server")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: BridgeSettings | None = None,
    *,
    replay_store: ReplayStore | None = None,
    key_store: KeyStore | None = None,
    engine_settings: EngineSettings | None = None,
) -> APIFlask:
    """Build the bridge app. Injected stores replace the ones the settings describe (tests, embedding).

    ``engine_settings`` (default: ``ENGINE_*`` from the environment) is read only to validate avatars and
    text limits before a job is queued; the worker renders with its own.
    """
    settings = settings or get_settings()
    app = APIFlask("bridge", title="Talking Head bridge", version=_version(),
                   spec_path="/openapi.json", docs_path=None)
    limits = BodyLimits.from_settings(settings)
    app.config.update(
        MAX_FORM_MEMORY_SIZE=MAX_FORM_FIELD_BYTES,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        AUTO_OPERATION_ID=True,
        SECURITY_SCHEMES={
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": f"Per-call HS256 JWT (typ {TOKEN_TYPE}) signed with an API key's secret; "
                f"aud {settings.jwt_audience}, iss {settings.jwt_issuer}, lifetime at most "
                f"{settings.jwt_max_lifetime_s} s, single-use jti.",
            }
        },
    )
    problems.register(app)
    for unavailable in DB_UNAVAILABLE:
        app.register_error_handler(unavailable, _database_unavailable)
    webargs_parser.unknown = None  # let each schema's Meta.unknown (RAISE) apply to query strings too
    refuse_unreadable_values(webargs_parser)
    app.spec_processor(lambda spec: document_uploads(problems.document_problem_responses(spec)))
    app.wsgi_app = BodyGuard(app.wsgi_app, limits)  # type: ignore[method-assign]
    for refused, handler in problem_handlers(limits).items():
        app.register_error_handler(refused, handler)
    init_request_logging(app)

    if key_store is None:
        env_keys = parse_env_keys(key.get_secret_value() for key in settings.api_keys)
        key_store = KeyStore(settings.keys_path, env_keys)
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    database = Database(settings.database)
    database.create_all()
    install_log_redaction()
    store = object_store(settings)
    app.extensions["bridge"] = BridgeState(
        settings=settings,
        keys=key_store,
        replay_store=replay_store or RedisReplayStore(settings.redis_url, settings.redis_timeout_s),
        redis=redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=HEALTH_TIMEOUT_S, socket_timeout=HEALTH_TIMEOUT_S
        ),
        db=database,
        storage=Storage(settings.storage_root),
        links=link_minter(settings, store),
        file_signer=LinkSigner(load_link_secret(settings), settings.base_url, settings.link_ttl_s),
        object_store=store,
        celery=make_celery(settings, publisher=True),
        engine_settings=engine_settings or EngineSettings(),
    )
    app.extensions["bridge_metrics"] = _metrics_registry(settings, database)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(whoami.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(voices.bp)
    app.register_blueprint(avatars.bp)
    app.register_blueprint(docs_blueprint())
    app.after_request(_safety_headers)
    return app


DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'")
"""What the docs page may load: only this origin (Swagger UI's page sets itself up with an inline script)."""


def _safety_headers(response: Response) -> Response:
    """Browsers must take every answer as the type it says (a downloaded file never becomes a page), and the docs
    page may run nothing from another origin."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path == DOCS_PATH or request.path.startswith(DOCS_PATH + "/"):
        response.headers.setdefault("Content-Security-Policy", DOCS_POLICY)
    return response


DOCS_PATH = "/docs"


def docs_blueprint() -> Blueprint:
    """Swagger UI at /docs, its files from the pinned flask-swagger-ui wheel, served from this origin.

    The page names no other origin: no CDN script runs on the bridge's origin, and the docs work offline.
    ``validatorUrl: none`` stops Swagger UI from sending the spec's URL to swagger.io's validator.
    """
    blueprint = get_swaggerui_blueprint(DOCS_PATH, "/openapi.json", config={
        "app_name": "Talking Head bridge API", "layout": "BaseLayout", "validatorUrl": "none",
        "oauth2RedirectUrl": f"{DOCS_PATH}/oauth2-redirect.html",
    })
    blueprint.add_url_rule("", endpoint="show")  # /docs itself, not only /docs/
    return blueprint


def _database_unavailable(error: DBAPIError) -> Response:
    """A refused or cut database connection (a restart, a failover, a lock held too long) is a 503 to retry.

    The pool drops the dead connections, so the first request after the database is back succeeds.
    """
    log.warning("the job table is unavailable: %s", type(error.orig).__name__)
    return problems.problem(503, None, "the job table (database) is unavailable; retry shortly",
                            problems.UNAVAILABLE, headers={"Retry-After": "5"})


UPLOAD_PARTS = {("/v1/jobs", "post"): ("audio", ("text", "audio_url")), ("/v1/avatars", "post"): ("file", ("url",))}
"""Endpoints taking JSON or multipart: their file part, and the fields of which exactly one (or the file) is given."""


def _given(name: str) -> dict[str, Any]:
    """``name`` is present and not null (null means absent, as in the request schemas)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _exactly_one(fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**_given(name), "not": {"anyOf": [_given(other) for other in fields if other != name]}}
            if len(fields) > 1 else _given(name) for name in fields]


BODY_REFUSALS = {"408": "The body did not arrive within BRIDGE_BODY_TIMEOUT_S",
                  "413": "The body is over BRIDGE_MAX_JSON_LENGTH (JSON) or BRIDGE_MAX_CONTENT_LENGTH (multipart)"}


def document_uploads(spec: dict[str, Any]) -> dict[str, Any]:
    """Spec processor: those bodies are JSON or multipart/form-data with a file part (not urlencoded forms),
    say which fields are alternatives, and may be refused as too slow or too large."""
    for (path, method), (part, sources) in UPLOAD_PARTS.items():
        operation = spec.get("paths", {}).get(path, {}).get(method, {})
        body = operation.get("requestBody")
        if not body:
            continue
        for status, description in BODY_REFUSALS.items():
            operation["responses"].setdefault(status, {"description": description, "content": {
                problems.PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}})
        content = body["content"]
        content.pop("application/x-www-form-urlencoded", None)
        schema = content["application/json"]["schema"]
        content["application/json"]["schema"] = {"allOf": [schema, {"oneOf": _exactly_one(sources)}]}
        with_file = (*sources, part)
        content["multipart/form-data"] = {"schema": {"allOf": [schema, {
            "type": "object", "properties": {part: {"type": "string", "format": "binary"}},
            "oneOf": _exactly_one(with_file)}]}}
        body["required"] = True
    return spec


def _metrics_registry(settings: BridgeSettings, database: Database) -> CollectorRegistry:
    """Gauges read at scrape time from the table, Redis and the disk: right whichever process serves them."""
    fast = {"socket_timeout": HEALTH_TIMEOUT_S, "socket_connect_timeout": HEALTH_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0)}
    stats = redis.Redis.from_url(settings.redis_url, **fast)
    broker = redis.Redis.from_url(settings.broker, **fast)
    return bridge_metrics.make_registry(bridge_metrics.BridgeCollector(
        queue_depth=bridge_metrics.redis_queue_depth(broker, [settings.queue]),
        jobs_by_status=database.counts_by_status,
        failures_by_reason=database.failures_by_reason,
        heartbeats=lambda: bridge_metrics.read_heartbeats(stats),
        storage_free_bytes=bridge_metrics.disk_free(settings.storage_root),
    ))
