"""Render jobs: POST /v1/jobs (202 + Location), GET /v1/jobs/{id}, cancel, GET /v1/jobs (cursor pages).

The row is written before the message is published, so a broker outage leaves a queued row and a
503; the worker's reaper publishes it later, and a retry with the same Idempotency-Key gets the same
job. Audio comes as text (spoken by the engine), an ``audio_url`` or a multipart ``audio`` part; either
of the last two is downloaded or saved and checked with ffprobe before the job exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range
from flask import Response, current_app, request
from kombu.exceptions import KombuError
from marshmallow import RAISE, ValidationError, validates
from redis.exceptions import RedisError

from bridge.api.deps import RETRY_AFTER_S, SECURITY_SCHEME, current_claims, current_owner, require_token, state
from bridge.api.intake import (
    Intake,
    UploadBody,
    check_callback,
    file_parts_problem,
    insert_job,
    json_or_multipart,
    refused,
    take_upload,
    take_url,
    url_field,
)
from bridge.api.quotas import quota_for
from bridge.api.speech import check_lang, check_voice, speech_problem
from bridge.api.voices import voice_backend
from bridge.db import Database, Job, new_job_id
from bridge.jobview import job_json
from bridge.problems import TYPE_BASE, UNAVAILABLE, invalid, problem
from bridge.storage import JOB_ID
from bridge.tasks import publish
from engine import EngineError
from engine.avatars import ID_PATTERN, AvatarStore

bp = APIBlueprint("jobs", __name__, tag="jobs")

POLL_AFTER_S = "2"
MAX_KEY_LENGTH = 255
MAX_BATCH = 10
DEFAULT_AVATAR = "astronaut"
RESOLUTIONS = ("source", "720p", "1080p")
RENDERERS = ("procedural", "wav2lip", "heygem")
FINISHED = TYPE_BASE + "job-finished"
UPLOAD_FIELD = "audio"


class JobIn(UploadBody):
    """The job, as JSON or as multipart form fields (with the audio file in the ``audio`` part)."""

    text = String(load_default=None, validate=Length(min=1),
                  metadata={"description": "What the avatar says. Give exactly one of text, audio_url and an "
                            "`audio` file part."})
    audio_url = String(load_default=None, validate=url_field,
                       metadata={"description": "https URL of a recording (wav, mp3, m4a, aac, flac, ogg) to "
                                 "lip-sync instead of text.", "example": "https://files.example.com/hello.mp3"})
    avatar_id = String(load_default=None, validate=Length(1, 64),
                       metadata={"example": DEFAULT_AVATAR, "description": f"Default: {DEFAULT_AVATAR}."})
    avatar_ids = List(String(validate=Length(1, 64)), load_default=None, validate=Length(1, MAX_BATCH),
                      metadata={"description": "Batch: one speech, one video per avatar (instead of avatar_id)."})
    lang = String(load_default="auto", validate=check_lang, metadata={"description": "BCP 47 tag or auto."})
    voice = String(load_default=None, allow_none=True, validate=check_voice,
                   metadata={"description": "A voice id from GET /v1/voices."})
    speed = Float(load_default=1.0, validate=Range(0.5, 2.0))
    resolution = String(load_default="source", validate=OneOf(RESOLUTIONS))
    subtitles = Boolean(load_default=False, metadata={"description": "Also make WebVTT and SRT subtitles."})
    renderer = String(load_default=None, allow_none=True, validate=OneOf(RENDERERS),
                      metadata={"description": "Lip-sync renderer; default: the server's."})
    callback_url = String(load_default=None, allow_none=True, validate=url_field,
                          metadata={"description": "https URL the finished job is POSTed to, signed with "
                                    "X-Signature (HMAC-SHA256 with your API key's secret)."})

    @validates("text")
    def _not_blank(self, value: str | None, **_: Any) -> None:
        if value is not None and not value.strip():
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
    notes = List(String(), required=True, metadata={
        "description": "What the engine decided for you, in words: the language `lang: auto` picked, a voice that "
                       "does not speak the text's language, an avatar with several faces.",
        "example": ["auto-detected language: French (fr)"]})


class JobOut(Schema):
    id = String(required=True)
    kind = String(required=True, validate=OneOf(["render", "avatar"]))
    status = String(required=True, validate=OneOf(["queued", "running", "succeeded", "failed", "canceled"]))
    stage = String(allow_none=True)
    progress = Float(required=True)
    attempts = Integer(required=True)
    error = Nested(ErrorOut, allow_none=True)
    created_at = String(required=True)
    updated_at = String(required=True)
    started_at = String(allow_none=True)
    finished_at = String(allow_none=True)
    outputs = List(Nested(OutputOut), required=True, metadata={"description": "One per avatar, in request order."})
    avatar = Dict(allow_none=True, metadata={"description": "What an avatar job made (kind avatar)."})
    files_deleted_at = String(allow_none=True, metadata={"description": "When retention deleted the outputs."})


class JobCreatedHeaders(Schema):
    location = String(data_key="Location", metadata={"description": "Where to poll: /v1/jobs/{id}."})
    retry_after = Integer(data_key="Retry-After", metadata={"description": "Seconds to wait before polling."})


class JobPage(Schema):
    jobs = List(Nested(JobOut), required=True)
    next_cursor = String(allow_none=True,
                         metadata={"description": "Pass as cursor for the next page; null at the end."})


class ListQuery(Schema):
    class Meta:
        unknown = RAISE  # a misspelt field is an error, not silently ignored

    limit = Integer(load_default=20, validate=Range(1, 100))
    cursor = String(load_default=None, allow_none=True, validate=Length(1, 200))


def _fingerprint(body: dict[str, Any]) -> str:
    """What 'the same request' means for an Idempotency-Key: the validated body, defaults filled in."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dispatch(db: Database, job: Job) -> Response | None:
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


def avatar_problem(avatar_id: str, field: str) -> Response | None:
    """None when the caller may render ``avatar_id``; else a 422 that reveals no other caller's avatars."""
    st = state()
    claims = current_claims()
    if not ID_PATTERN.fullmatch(avatar_id):
        return invalid(field, "not an avatar id: 1-64 characters a-z, 0-9, '-' or '_'", "invalid_avatar_id")
    unknown = invalid(field, f"there is no avatar {avatar_id!r} you can use: it was deleted, or it is not yours; "
                             "GET /v1/avatars lists the ones you can use", "unknown_avatar")
    row = st.db.avatar(avatar_id)
    if row is not None and row.kid != claims.kid and not claims.admin:
        return unknown
    if row is not None and row.status != "ready":
        return invalid(field, f"avatar {avatar_id!r} is {row.status}; wait for its job or upload it again",
                       "avatar_not_ready")
    try:
        AvatarStore(st.engine_settings).get(avatar_id)
    except EngineError:
        return unknown
    return None


def idempotency_key() -> str | Response | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        return invalid("Idempotency-Key", f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
                       "invalid_idempotency_key", "headers")
    return key


def _speech_source(body: dict[str, Any]) -> Intake | Response | None:
    """The uploaded or downloaded audio (None for text); a 422 when the sources are not exactly one."""
    upload = request.files.get(UPLOAD_FIELD)
    given = [name for name, value in (("text", body["text"]), ("audio_url", body["audio_url"]),
                                      (UPLOAD_FIELD, upload)) if value is not None]
    if len(given) != 1:
        what = " and ".join(given) if given else "none of them"
        return invalid("text", f"give exactly one of text, audio_url and an audio file part (got {what})",
                       "one_speech_source")
    if body["text"] is not None:
        limit = state().engine_settings.max_text_chars
        too_long = len(body["text"]) > limit
        return invalid("text", f"longer than the {limit} characters allowed", "text_too_long") if too_long else None
    try:
        if upload is not None:
            return take_upload(upload, "audio", UPLOAD_FIELD)
        return take_url(body["audio_url"], "audio", "audio_url")
    except EngineError as err:
        return refused(err)


@bp.post("/v1/jobs")
@require_token("jobs:write")
@json_or_multipart
@bp.input(JobIn, location="json_or_form", arg_name="body")
@bp.output(JobOut, status_code=202, headers=JobCreatedHeaders,
           description="Accepted: poll the Location until status is succeeded, failed or canceled.")
@bp.doc(summary="Submit a render job", security=SECURITY_SCHEME, responses={
    403: "The token lacks the jobs:write scope",
    413: "The body (or the audio upload) is larger than the bridge accepts",
    415: "The body is neither application/json nor multipart/form-data",
    422: "The body is invalid, the audio was refused, the avatar is unknown, or the Idempotency-Key was used "
         "with another body",
    429: "The API key has as many jobs queued or running, or stores as many bytes, as the bridge allows per key; "
         "the response has Retry-After",
    503: "Tokens cannot be verified or the job queue is unavailable; the response has Retry-After"})
def create_job(body: dict[str, Any]) -> Any:
    st = state()
    claims = current_claims()
    if (failure := file_parts_problem(UPLOAD_FIELD, frozenset({"avatar_ids"}))) is not None:
        return failure
    if body["avatar_id"] and body["avatar_ids"]:
        return invalid("avatar_ids", "give avatar_id or avatar_ids, not both", "one_avatar_field")
    avatars = body["avatar_ids"] or [body["avatar_id"] or DEFAULT_AVATAR]
    field = "avatar_ids" if body["avatar_ids"] else "avatar_id"
    for avatar_id in avatars:
        if (failure := avatar_problem(avatar_id, field)) is not None:
            return failure
    if (failure := speech_problem(body)) is not None:
        return failure
    if body["callback_url"]:
        try:
            check_callback(body["callback_url"])
        except EngineError as err:
            return refused(err)
    key = idempotency_key()
    if isinstance(key, Response):
        return key
    source = _speech_source(body)
    if isinstance(source, Response):
        return source
    inputs = {k: v for k, v in body.items() if k not in {"avatar_id", "avatar_ids", "audio_url", "callback_url"}}
    inputs["avatar_ids"] = avatars
    if body["voice"]:  # a piper or server voice is spoken by its own backend, not the default one
        inputs["tts"] = voice_backend(body["voice"])
    if source is not None:
        inputs.update(text=None, audio=f"audio.{source.media.ext.lstrip('.')}", audio_sha256=source.sha256)
    fingerprint = _fingerprint({**inputs, "callback_url": body["callback_url"]}) if key is not None else None
    job_id = new_job_id()

    def create() -> tuple[Job, bool]:
        size = 0
        if source is not None:
            size = source.path.stat().st_size
            st.storage.put_input(job_id, inputs["audio"], source.path)
        return st.db.create_job(current_owner(), {**inputs, "kid": claims.kid}, idempotency_key=key,
                                fingerprint=fingerprint, callback_url=body["callback_url"], job_id=job_id,
                                queue=st.settings.queue, stored_bytes=size, quota=quota_for(st.settings, claims.admin))

    try:
        inserted = insert_job(job_id, create, "request body")
    finally:
        if source is not None:
            source.discard()
    if isinstance(inserted, Response):
        return inserted
    job, created = inserted
    if created or job.dispatched_at is None:
        failure = dispatch(st.db, job)
        if failure is not None:
            return failure
    return job_json(job, st.links), 202, {"Location": f"/v1/jobs/{job.id}", "Retry-After": POLL_AFTER_S}


def _callers_job(job_id: str) -> Job | None:
    """The job if the caller may see it (its key's and its sub's, or any for an admin), else None: 404 either way."""
    owner = None if current_claims().admin else current_owner()
    return state().db.get_job(job_id, owner) if JOB_ID.fullmatch(job_id) else None


@bp.get("/v1/jobs/<job_id>")
@require_token("jobs:read")
@bp.output(JobOut, description="The job; outputs carry freshly signed download links.")
@bp.doc(summary="Get a job", security=SECURITY_SCHEME, responses={
    403: "The token lacks the jobs:read scope",
    404: "No such job, or it belongs to another caller", 503: "Tokens cannot be verified right now"})
def get_job(job_id: str) -> Any:
    st = state()
    job = _callers_job(job_id)
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
    job = _callers_job(job_id)
    if job is None:
        return problem(404, None, "There is no job with that id.")
    if not st.db.cancel(job.id):
        job = st.db.get_job(job.id) or job
        return problem(409, None, f"the job already {job.status}; only queued or running jobs can be canceled",
                       FINISHED, code="job_finished", status_now=job.status)
    if job.kind == "avatar":
        st.db.set_avatar_status(str(job.inputs["avatar_id"]), "failed", "its preprocessing job was canceled")
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
    return when.astimezone(UTC), job_id  # OverflowError for a time that exists only in some other zone


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
        except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
            return invalid("cursor", "not a cursor this API returned; pass next_cursor from the last page",
                           "invalid_cursor", "query")
    page = st.db.list_jobs(current_owner(), after, query["limit"])
    next_cursor = _encode_cursor(page.next_after) if page.next_after else None
    headers = {"Link": f'</v1/jobs?limit={query["limit"]}&cursor={next_cursor}>; rel="next"'} if next_cursor else {}
    return {"jobs": [job_json(job, st.links) for job in page.jobs], "next_cursor": next_cursor}, 200, headers
