"""``python -m bridge``: manage API keys, mint a token by hand, run the API server, run a render worker."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from bridge.auth import SCOPES, AuthError, check_sub, mint_token
from bridge.keys import KEY_PREFIX, KeyFileError, KeyStore, parse_env_keys
from bridge.settings import BridgeSettings, get_settings


def _keys_create(store: KeyStore, args: argparse.Namespace) -> int:
    print(store.create(admin=args.admin))
    return 0


def _keys_list(store: KeyStore, args: argparse.Namespace) -> int:
    rows = [("KID", "CREATED", "ADMIN", "REVOKED", "SOURCE")]
    rows += [(k.kid, k.created_at or "-", "yes" if k.admin else "no", "yes" if k.revoked else "no", k.source)
             for k in store.list()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _keys_revoke(store: KeyStore, args: argparse.Namespace) -> int:
    try:
        store.revoke(args.kid)
    except KeyError:
        print(f"error: no key with id {args.kid}", file=sys.stderr)
        return 1
    print(f"revoked {args.kid}", file=sys.stderr)
    return 0


KEY_ENV = "TALKING_HEAD_API_KEY"
"""Where ``token`` reads the API key when ``--key`` is not given: a variable keeps the secret out of shell
history and out of ``ps``, which is where ``--key thk_…`` puts it."""
DEFAULT_SUB = "cli"
"""A fixed default, so tokens minted one after another name the same caller and see each other's jobs."""
DEFAULT_LIFETIME_S = 120


class _UsageError(Exception):
    """What the user must change; never quotes the key."""


def _api_key(source: str | None) -> str:
    """The key from ``--key``, from stdin (``--key -``; typed without echo on a terminal) or from KEY_ENV."""
    if source == "-":
        key = getpass.getpass("API key (not shown): ") if sys.stdin.isatty() else sys.stdin.readline()
        what = "stdin"
    elif source is None:
        key, what = os.environ.get(KEY_ENV, ""), KEY_ENV
    else:
        key, what = source, "--key"
    key = key.strip()
    if not key and source is None:
        raise _UsageError(f"no API key: set {KEY_ENV}, or pass --key - to read it from stdin")
    if not key:
        raise _UsageError(f"no API key in {what}")
    if not key.startswith(f"{KEY_PREFIX}_"):
        raise _UsageError(f"the API key in {what} must start with '{KEY_PREFIX}_' (python -m bridge keys create "
                          "prints one)")
    return key


def _scopes(given: list[str] | None) -> list[str]:
    if given is None:
        return sorted(SCOPES)
    scopes = [scope for value in given for scope in value.replace(",", " ").split()]
    unknown = sorted(set(scopes) - SCOPES)
    if unknown or not scopes:
        raise _UsageError(f"--scope {' '.join(unknown) or '(empty)'} is not a scope; choose from "
                          f"{', '.join(sorted(SCOPES))}")
    return list(dict.fromkeys(scopes))


def _token(settings: BridgeSettings, args: argparse.Namespace) -> int:
    """Print one fresh token: the key signs it here and never travels; the bridge accepts the token once."""
    try:
        if not 0 < args.lifetime <= settings.jwt_max_lifetime_s:
            raise _UsageError(f"--lifetime must be 1 to {settings.jwt_max_lifetime_s} s (the bridge refuses "
                              "longer-lived tokens: BRIDGE_JWT_MAX_LIFETIME_S)")
        scopes = _scopes(args.scope)
        try:
            sub = check_sub(args.sub)
        except AuthError as exc:
            raise _UsageError(f"--sub: {exc.reason.removeprefix('sub claim ')}") from None
        key = _api_key(args.key)
        try:
            token = mint_token(key, sub, scopes, settings.jwt_audience, settings.jwt_issuer, args.lifetime)
        except ValueError as exc:  # parse_api_key's messages never echo the secret
            raise _UsageError(str(exc)) from None
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    if sys.stdout.isatty():
        print(f"(one request only, within {args.lifetime} s; sub {sub!r}, scopes {' '.join(scopes)})", file=sys.stderr)
    return 0


def _serve(settings: BridgeSettings) -> int:
    """gunicorn with threaded workers (gthread): no monkey-patching, worker recycling, kill on timeout."""
    from gunicorn.app.base import BaseApplication

    from bridge.db import Database

    settings.storage_root.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives there
    database = Database(settings.database)
    database.create_all()  # once, before forking: workers creating tables at the same time collide
    database.dispose()

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{settings.host}:{settings.port}", "worker_class": "gthread",
                "workers": settings.api_workers, "threads": settings.api_threads, "timeout": 60,
                "graceful_timeout": 30, "max_requests": 1000, "max_requests_jitter": 100, "accesslog": None,
                "proc_name": "talking-head-bridge",
                "control_socket_disable": True,  # its default path under $HOME may be shared by every API host
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            """Runs in each worker process, so each has its own DB engine and Redis pools."""
            from bridge.app import create_app
            from bridge.logs import configure_logging

            configure_logging(settings.log_level, json=settings.log_json)
            return create_app(settings)

    Server().run()
    return 0


def _worker(settings: BridgeSettings) -> int:
    """One prefork child per worker: time limits need prefork, and one child owns the engine's models.

    The main process also runs the reaper (bridge/reaper.py), started once the pool is up.
    """
    import redis
    from celery.signals import setup_logging, worker_ready, worker_shutdown

    from bridge.callbacks import Notifier
    from bridge.db import Database
    from bridge.fetch import fetch_policy
    from bridge.links import link_minter, object_store
    from bridge.logs import configure_logging
    from bridge.metrics import Heartbeat
    from bridge.reaper import Reaper, ReaperThread, broker_messages
    from bridge.retention import Retention
    from bridge.storage import Storage
    from bridge.tasks import make_celery, publish

    setup_logging.connect(lambda **_: configure_logging(settings.log_level, json=settings.log_json), weak=False)
    app = make_celery(settings)
    broker = redis.Redis.from_url(settings.broker, socket_timeout=settings.redis_timeout_s)
    database = Database(settings.database)
    database.create_all()
    store = object_store(settings)
    links = link_minter(settings, store)
    env_keys = parse_env_keys(key.get_secret_value() for key in settings.api_keys)
    reaper = ReaperThread([
        Reaper(database, settings.queue, lambda job_id: publish(app, settings.queue, job_id), settings.job_max_attempts,
               lambda: broker_messages(broker, settings.queue), grace_s=max(2 * settings.reaper_interval_s, 1.0)).sweep,
        Notifier(database, links, KeyStore(settings.keys_path, env_keys), fetch_policy(settings),
                 settings.callback_max_attempts, settings.callback_backoff_s).sweep,
        Retention(database, Storage(settings.storage_root), store, settings.retention_s).sweep,
    ], settings.reaper_interval_s)
    beats: list[Heartbeat] = []

    def ready(sender: Any = None, **_: Any) -> None:
        reaper.start()
        beats.append(Heartbeat(broker, str(getattr(sender, "hostname", "worker")), settings.worker_heartbeat_s).start())

    def shutdown(**_: Any) -> None:
        reaper.stop()
        for beat in beats:
            beat.stop()

    worker_ready.connect(ready, weak=False)
    worker_shutdown.connect(shutdown, weak=False)
    app.worker_main([
        "worker", "-P", "prefork", "-c", "1", "-Q", settings.queue, "--loglevel", "INFO", "-O", "fair",
        "-n", f"{settings.queue}-{os.getpid()}@%h", "--without-mingle", "--without-gossip",
    ])
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse quotes unrecognised arguments in its errors: a key typed in the wrong place must not be echoed."""

    def error(self, message: str) -> NoReturn:
        from bridge.logs import redact

        super().error(redact(message))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bridge", description="Talking Head bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="manage API keys (the keys file is BRIDGE_KEYS_FILE)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--admin", action="store_true", help="tokens signed with this key are admin")
    create.set_defaults(run=_keys_create)
    key_commands.add_parser("list", help="list keys (never their secrets)").set_defaults(run=_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key; effective on the next request")
    revoke.add_argument("kid")
    revoke.set_defaults(run=_keys_revoke)
    token = commands.add_parser(
        "token", help="print a fresh per-call token for curl (single-use, short-lived)",
        description="Print a bearer token signed with an API key, for one request to the bridge (it accepts each "
                    f"token once, until it expires). The key is read from ${KEY_ENV} unless --key is given.",
    )
    token.add_argument("--key", metavar="thk_…", help=f"the API key, or '-' to read it from stdin (typed without "
                       f"echo on a terminal); default ${KEY_ENV}. A key on the command line lands in shell history "
                       "and is visible to other users in ps")
    token.add_argument("--sub", default=DEFAULT_SUB, help="the caller the token names; jobs belong to the key plus "
                       f"this (default: {DEFAULT_SUB}; the Dify plugin uses the Dify user's id)")
    token.add_argument("--scope", action="append", metavar="SCOPE", help="a scope the token grants; repeat, or "
                       f"space-separate (default: all of {', '.join(sorted(SCOPES))})")
    token.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME_S, metavar="SECONDS",
                       help=f"seconds until it expires (default: {DEFAULT_LIFETIME_S}; at most "
                       "BRIDGE_JWT_MAX_LIFETIME_S)")
    commands.add_parser("serve", help="run the API on BRIDGE_HOST:BRIDGE_PORT")
    commands.add_parser("worker", help="run a Celery render worker on BRIDGE_QUEUE (needs Redis)")
    commands.add_parser("up", help="one machine: a local Redis, one worker and the API; Ctrl-C stops all")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = get_settings()
    if args.command == "serve":
        return _serve(settings)
    if args.command == "worker":
        return _worker(settings)
    if args.command == "token":
        return _token(settings, args)
    if args.command == "up":
        from bridge.up import run

        return run(settings)
    try:
        env_keys = parse_env_keys(key.get_secret_value() for key in settings.api_keys)
        return int(args.run(KeyStore(settings.keys_path, env_keys), args))
    except (KeyFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
