"""Avatars: GET /v1/avatars, POST /v1/avatars (upload or url → a preprocessing job), DELETE /v1/avatars/{id}.

An avatar made through the API belongs to the API key that signed its caller's token (the ``avatars``
table's ``kid``), not to one ``sub``: a Dify workspace holds one key, and its avatars serve every app and end
user there (bridge/README.md, "Tenants, quotas and turns"). Avatars that exist only in the engine's store (the
samples, ones made with ``python -m engine avatars add``) are shared by everyone and deleted only by an admin.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Boolean, Float, Integer, List, Nested, String
from apiflask.validators import Length
from flask import Response, request

from bridge.api.deps import SECURITY_SCHEME, current_claims, current_owner, require_token, state
from bridge.api.intake import (
    UploadBody,
    file_parts_problem,
    insert_job,
    json_or_multipart,
    refused,
    take_upload,
    take_url,
    url_field,
)
from bridge.api.jobs import JobOut, dispatch, idempotency_key
from bridge.api.quotas import quota_for
from bridge.db import AvatarRow, Job, new_job_id
from bridge.jobview import iso, job_json
from bridge.names import display_name
from bridge.problems import TYPE_BASE, invalid, problem
from engine import EngineError
from engine.avatars import ID_PATTERN, Avatar, AvatarStore

bp = APIBlueprint("avatars", __name__, tag="avatars")
UPLOAD_FIELD = "file"
SHARED_ONLY_ADMIN = TYPE_BASE + "shared-avatar"
AVATAR_GONE = TYPE_BASE + "avatar-deleted"


class AvatarIn(UploadBody):
    """JSON with ``url``, or multipart form fields with the video or photo in the ``file`` part."""

    name = String(load_default=None, validate=Length(1, 1000),
                  metadata={"example": "Ada, front camera", "description": "Shown in lists; control and text-direction "
                            "characters are removed and it is cut to 100 characters."})
    url = String(load_default=None, validate=url_field,
                 metadata={"description": "https URL of a video (MP4/MOV, MKV/WebM, AVI, FLV) or photo "
                           "(PNG, JPEG, WebP) of one face; or upload it as the `file` part."})


class AvatarOut(Schema):
    id = String(required=True, metadata={"description": "Pass as avatar_id in POST /v1/jobs."})
    name = String(required=True)
    status = String(required=True, metadata={"description": "processing, ready or failed."})
    shared = Boolean(required=True, metadata={"description": "Made by the operator; usable by every caller."})
    kind = String(allow_none=True, metadata={"description": "video or photo (once ready)."})
    width = Integer(allow_none=True)
    height = Integer(allow_none=True)
    fps = Float(allow_none=True)
    duration_s = Float(allow_none=True)
    job_id = String(allow_none=True, metadata={"description": "The preprocessing job (API-made avatars)."})
    error = String(allow_none=True)
    created_at = String(allow_none=True)
    preview_url = String(allow_none=True, metadata={"description": "Signed link to a JPEG still (once ready)."})


class AvatarList(Schema):
    avatars = List(Nested(AvatarOut), required=True)


class AvatarCreated(Schema):
    avatar = Nested(AvatarOut, required=True)
    job = Nested(JobOut, required=True)


def _describe(avatar: Avatar | None, row: AvatarRow | None) -> dict[str, Any]:
    made = {"kind": avatar.kind, "width": avatar.width, "height": avatar.height, "fps": avatar.fps,
            "duration_s": round(avatar.duration_s, 3),
            "preview_url": state().file_signer.sign_avatar_preview(avatar.id).url} if avatar else dict.fromkeys(
        ("kind", "width", "height", "fps", "duration_s", "preview_url"))
    if row is None:
        assert avatar is not None
        return {"id": avatar.id, "name": avatar.name, "status": "ready", "shared": True, **made, "job_id": None,
                "error": None, "created_at": None}
    return {"id": row.id, "name": row.name, "status": row.status, "shared": False, **made, "job_id": row.job_id,
            "error": row.error_message, "created_at": iso(row.created_at)}


@bp.get("/v1/avatars")
@require_token("jobs:read")
@bp.output(AvatarList, description="Your avatars (any status), then the shared ones.")
@bp.doc(summary="List avatars", security=SECURITY_SCHEME,
        responses={403: "The token lacks the jobs:read scope", 503: "Tokens cannot be verified right now"})
def list_avatars() -> Any:
    st = state()
    claims = current_claims()
    made = {a.id: a for a in AvatarStore(st.engine_settings).list()}
    everyone = {row.id: row for row in st.db.avatars()}
    mine = [row for row in everyone.values() if row.kid == claims.kid or claims.admin]
    shared = [a for a in made.values() if a.id not in everyone]
    return {"avatars": [_describe(made.get(row.id), row) for row in mine] + [_describe(a, None) for a in shared]}


@bp.post("/v1/avatars")
@require_token("avatars:write")
@json_or_multipart
@bp.input(AvatarIn, location="json_or_form", arg_name="body")
@bp.output(AvatarCreated, status_code=202,
           description="Accepted: the avatar is processing; poll the job (Location) until it succeeds.")
@bp.doc(summary="Add an avatar", security=SECURITY_SCHEME, responses={
    403: "The token lacks the avatars:write scope", 413: "The upload is larger than the bridge accepts",
    415: "The body is neither application/json nor multipart/form-data",
    410: "The Idempotency-Key was used for an avatar that has since been deleted",
    422: "No file or url, or the media was refused (not a video or photo, too long, too large)",
    429: "The API key has as many avatars, or stores as many bytes, as the bridge allows per key",
    503: "Tokens cannot be verified or the job queue is unavailable"})
def create_avatar(body: dict[str, Any]) -> Any:
    st = state()
    claims = current_claims()
    if (failure := file_parts_problem(UPLOAD_FIELD)) is not None:
        return failure
    upload = request.files.get(UPLOAD_FIELD)
    if (upload is None) == (body["url"] is None):
        field = "url" if upload is None else UPLOAD_FIELD
        return invalid(field, "give exactly one of url and a file part named 'file'", "one_avatar_source")
    key = idempotency_key()
    if isinstance(key, Response):
        return key
    try:
        if upload is not None:
            source = take_upload(upload, "avatar", UPLOAD_FIELD)
        else:
            source = take_url(body["url"], "avatar", "url")
    except EngineError as err:
        return refused(err)
    avatar_id = f"av-{uuid.uuid4().hex[:16]}"
    name = display_name(body["name"]) or display_name(upload.filename if upload is not None else None) or "avatar"
    upload_name = f"avatar.{source.media.ext.lstrip('.')}"
    inputs = {"upload": upload_name, "avatar_id": avatar_id, "name": name, "upload_sha256": source.sha256,
              "kid": claims.kid}
    job_id = new_job_id()

    def create() -> tuple[Job, bool]:
        size = source.path.stat().st_size
        st.storage.put_input(job_id, upload_name, source.path)
        return st.db.create_job(
            current_owner(), inputs, idempotency_key=key, kind="avatar", avatar=(avatar_id, name), job_id=job_id,
            queue=st.settings.queue, stored_bytes=size, quota=quota_for(st.settings, claims.admin),
            fingerprint=source.sha256 + (body["name"] or "") if key is not None else None)

    try:
        inserted = insert_job(job_id, create, "upload")
    finally:
        source.discard()
    if isinstance(inserted, Response):
        return inserted
    job, created = inserted
    row = st.db.avatar(job.inputs["avatar_id"])
    if row is None:  # a replay of a request whose avatar has since been deleted
        return problem(410, None, "this Idempotency-Key made an avatar that has since been deleted; to add it "
                       "again, send the request with a new Idempotency-Key", AVATAR_GONE, "Idempotency-Key",
                       code="avatar_deleted", job_id=job.id)
    if created or job.dispatched_at is None:
        failure = dispatch(st.db, job)
        if failure is not None:
            return failure
    return ({"avatar": _describe(None, row), "job": job_json(job, st.links)}, 202,
            {"Location": f"/v1/jobs/{job.id}", "Retry-After": "2"})


@bp.delete("/v1/avatars/<avatar_id>")
@require_token("avatars:write")
@bp.output({}, status_code=204, description="Deleted: the avatar can no longer be used.")
@bp.doc(summary="Delete an avatar", security=SECURITY_SCHEME, responses={
    403: "The token lacks avatars:write, or the avatar is shared and the caller is not an admin",
    404: "No such avatar, or it belongs to another caller", 503: "Tokens cannot be verified right now"})
def delete_avatar(avatar_id: str) -> Any:
    st = state()
    claims = current_claims()
    missing = problem(404, None, "There is no avatar with that id.")
    if not ID_PATTERN.fullmatch(avatar_id):
        return missing
    store = AvatarStore(st.engine_settings)
    row = st.db.avatar(avatar_id)
    if row is not None and row.kid != claims.kid and not claims.admin:
        return missing
    if row is None:
        try:
            store.get(avatar_id)
        except EngineError:
            return missing
        if not claims.admin:
            return problem(403, None, "shared avatars can only be deleted by an admin key", SHARED_ONLY_ADMIN,
                           code="shared_avatar")
    with contextlib.suppress(EngineError):  # still processing or failed: nothing in the store yet
        store.delete(avatar_id)
    st.db.delete_avatar(avatar_id)
    if row is not None and row.status == "processing":
        st.db.cancel(row.job_id)  # its preprocessing is wasted work now, and frees the key's job slot
    return "", 204
