"""Render jobs: POST /v1/jobs (202 + Location), GET /v1/jobs/{id}, GET /v1/jobs (cursor pages).

The row is written before the message is published, so a broker outage leaves a queued row and a
503 the client can retry with the same Idempotency-Key (the retry re-publishes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Boolean, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range
from flask import Response, current_app, request
from kombu.exceptions import KombuError
from marshmallow import ValidationError, validates
from redis.exceptions import RedisError

from bridge.api.deps import RETRY_AFTER_S, SECURITY_SCHEME, current_claims, require_token, state
from bridge.db import Database, IdempotencyConflict, Job
from bridge.links import LinkMinter
from bridge.problems import TYPE_BASE, UNAVAILABLE, VALIDATION, problem
from bridge.storage import JOB_ID
from bridge.tasks import publish
from engine import EngineError
from engine.avatars import AvatarStore

bp = APIBlueprint("jobs", __name__, tag="jobs")

POLL_AFTER_S = "2"
MAX_KEY_LENGTH = 255
RESOLUTIONS = ("source", "720p", "1080p")
IDEMPOTENCY = TYPE_BASE + "idempotency-key-reused"
FINISHED = TYPE_BASE + "job-finished"


class JobIn(Schema):
    text = String(required=True, validate=Length(min=1),
                  metadata={"description": "What the avatar says (at most the engine's max_text_chars)."})
    avatar_id = String(load_default="astronaut", validate=Length(1, 64), metadata={"example": "astronaut"})
    lang = String(load_default="auto", validate=Length(1, 16), metadata={"description": "BCP 47 tag or auto."})
    voice = String(load_default=None, allow_none=True, validate=Length(1, 128))
    speed = Float(load_default=1.0, validate=Range(0.5, 2.0))
    resolution = String(load_default="source", validate=OneOf(RESOLUTIONS))
    subtitles = Boolean(load_default=False, metadata={"description": "Also make WebVTT and SRT subtitles."})

    @validates("text")
    def _not_blank(self, value: str, **_: Any) -> None:
        if not value.strip():
            raise ValidationError("must contain something to say")


class ErrorOut(Schema):
    code = String(required=True, metadata={"example": "invalid_text"})
    message = String(required=True)


class OutputOut(Schema):
    avatar_id = String(required=True)
    video_url = String(required=True, metadata={"description": "Signed download link; valid until expires_at."})
    poster_url = String(allow_none=True)
    subtitles_url = String(allow_none=True, metadata={"description": "WebVTT, when subtitles were asked for."})
    expires_at = String(required=True, metadata={"description": "RFC 3339 UTC expiry of the links."})
    duration_s = Float(required=True)
    width = Integer(required=True)
    height = Integer(required=True)
    size_bytes = Integer(required=True)
    mime = String(required=True, metadata={"example": "video/mp4"})


class JobOut(Schema):
    id = String(required=True)
    status = String(required=True, validate=OneOf(["queued", "running", "succeeded", "failed", "canceled"]))
    stage = String(allow_none=True)
    progress = Float(required=True)
    attempts = Integer(required=True)
    error = Nested(ErrorOut, allow_none=True)
    created_at = String(required=True)
    updated_at = String(required=True)
    started_at = String(allow_none=True)
    finished_at = String(allow_none=True)
    outputs = List(Nested(OutputOut), required=True)


class JobCreatedHeaders(Schema):
    location = String(data_key="Location", metadata={"description": "Where to poll: /v1/jobs/{id}."})
    retry_after = Integer(data_key="Retry-After", metadata={"description": "Seconds to wait before polling."})


class JobPage(Schema):
    jobs = List(Nested(JobOut), required=True)
    next_cursor = String(allow_none=True,
                         metadata={"description": "Pass as cursor for the next page; null at the end."})


class ListQuery(Schema):
    limit = Integer(load_default=20, validate=Range(1, 100))
    cursor = String(load_default=None, allow_none=True, validate=Length(1, 200))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_json(job: Job, links: LinkMinter) -> dict[str, Any]:
    """The public view of a row; download links are minted now, so they are always fresh."""
    outputs = []
    for out in job.outputs or []:
        video = links.sign(job.id, out["name"])
        outputs.append({
            "avatar_id": out["avatar_id"],
            "video_url": video.url,
            "poster_url": links.sign(job.id, out["poster"]).url if out.get("poster") else None,
            "subtitles_url": links.sign(job.id, out["subtitles_vtt"]).url if out.get("subtitles_vtt") else None,
            "expires_at": _iso(datetime.fromtimestamp(video.expires_at, UTC)),
            **{key: out[key] for key in ("duration_s", "width", "height", "size_bytes", "mime")},
        })
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return {"id": job.id, "status": job.status, "stage": job.stage, "progress": job.progress,
            "attempts": job.attempts, "error": error, "created_at": _iso(job.created_at),
            "updated_at": _iso(job.updated_at), "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at), "outputs": outputs}


def _invalid(field: str, message: str, where: str = "json") -> Response:
    return problem(422, None, f"{field}: {message}", VALIDATION, field,
                   errors=[{"in": where, "field": field, "message": message}])


def _fingerprint(body: dict[str, Any]) -> str:
    """What 'the same request' means for an Idempotency-Key: the validated body, defaults filled in."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _dispatch(db: Database, job: Job) -> Response | None:
    """Publish the job id; a 503 problem when the broker cannot take it (the row stays queued)."""
    st = state()
    try:
        publish(st.celery, st.settings.queue, job.id)
    except (KombuError, RedisError, OSError) as exc:
        current_app.logger.error("cannot enqueue job %s: %s", job.id, type(exc).__name__)
        return problem(503, None, "the job queue (Redis) is unavailable; retry with the same Idempotency-Key",
                       UNAVAILABLE, headers={"Retry-After": RETRY_AFTER_S}, job_id=job.id)
    db.mark_dispatched(job.id)
    return None


@bp.post("/v1/jobs")
@require_token("jobs:write")
@bp.input(JobIn, location="json", arg_name="body")
@bp.output(JobOut, status_code=202, headers=JobCreatedHeaders,
           description="Accepted: poll the Location until status is succeeded, failed or canceled.")
@bp.doc(summary="Submit a render job", security=SECURITY_SCHEME, responses={
    403: "The token lacks the jobs:write scope",
    422: "The body is invalid, the avatar is unknown, or the Idempotency-Key was used with another body",
    503: "Tokens cannot be verified or the job queue is unavailable; the response has Retry-After"})
def create_job(body: dict[str, Any]) -> Any:
    st = state()
    limit = st.engine_settings.max_text_chars
    if len(body["text"]) > limit:
        return _invalid("text", f"longer than the {limit} characters allowed")
    try:
        AvatarStore(st.engine_settings).get(body["avatar_id"])
    except EngineError as err:
        return _invalid("avatar_id", str(err))
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        return _invalid("Idempotency-Key", f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters", "headers")
    try:
        job, created = st.db.create_job(current_claims().sub, body, idempotency_key=key,
                                        fingerprint=_fingerprint(body) if key is not None else None)
    except IdempotencyConflict:
        return problem(422, None, "this Idempotency-Key was already used with a different request body",
                       IDEMPOTENCY, "Idempotency-Key", code="idempotency_key_reused")
    if created or job.dispatched_at is None:
        failure = _dispatch(st.db, job)
        if failure is not None:
            return failure
    return job_json(job, st.links), 202, {"Location": f"/v1/jobs/{job.id}", "Retry-After": POLL_AFTER_S}


@bp.get("/v1/jobs/<job_id>")
@require_token("jobs:read")
@bp.output(JobOut, description="The job; outputs carry freshly signed download links.")
@bp.doc(summary="Get a job", security=SECURITY_SCHEME, responses={
    403: "The token lacks the jobs:read scope",
    404: "No such job, or it belongs to another caller", 503: "Tokens cannot be verified right now"})
def get_job(job_id: str) -> Any:
    st = state()
    claims = current_claims()
    job = st.db.get_job(job_id, None if claims.admin else claims.sub) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        return problem(404, None, "There is no job with that id.")
    return job_json(job, st.links)


@bp.post("/v1/jobs/<job_id>/cancel")
@require_token("jobs:write")
@bp.output(JobOut, description="The job, now canceled. A running render stops within a few seconds.")
@bp.doc(summary="Cancel a job", security=SECURITY_SCHEME, responses={
    403: "The token lacks the jobs:write scope", 404: "No such job, or it belongs to another caller",
    409: "The job already finished", 503: "Tokens cannot be verified right now"})
def cancel_job(job_id: str) -> Any:
    st = state()
    claims = current_claims()
    job = st.db.get_job(job_id, None if claims.admin else claims.sub) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        return problem(404, None, "There is no job with that id.")
    if not st.db.cancel(job.id):
        job = st.db.get_job(job.id) or job
        return problem(409, None, f"the job already {job.status}; only queued or running jobs can be canceled",
                       FINISHED, code="job_finished", status_now=job.status)
    return job_json(st.db.get_job(job.id) or job, st.links)


def _encode_cursor(after: tuple[datetime, str]) -> str:
    raw = json.dumps([after[0].isoformat(), after[1]]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    created, job_id = json.loads(raw)
    when = datetime.fromisoformat(created)
    if when.tzinfo is None or not JOB_ID.fullmatch(job_id):
        raise ValueError("bad cursor")
    return when, job_id


@bp.get("/v1/jobs")
@require_token("jobs:read")
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(JobPage, description="The caller's jobs, newest first.")
@bp.doc(summary="List my jobs", security=SECURITY_SCHEME,
        responses={403: "The token lacks the jobs:read scope", 503: "Tokens cannot be verified right now"})
def list_jobs(query: dict[str, Any]) -> Any:
    st = state()
    after = None
    if query["cursor"] is not None:
        try:
            after = _decode_cursor(query["cursor"])
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            return _invalid("cursor", "not a cursor this API returned", "query")
    page = st.db.list_jobs(current_claims().sub, after, query["limit"])
    next_cursor = _encode_cursor(page.next_after) if page.next_after else None
    headers = {"Link": f'</v1/jobs?limit={query["limit"]}&cursor={next_cursor}>; rel="next"'} if next_cursor else {}
    return {"jobs": [job_json(job, st.links) for job in page.jobs], "next_cursor": next_cursor}, 200, headers
