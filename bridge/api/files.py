"""GET /files/<job_id>/<name>: serve a job output to whoever holds a valid signed link (no token)."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import Integer, String
from flask import Response, current_app, send_file
from marshmallow import RAISE

from bridge.api.deps import state
from bridge.links import AVATAR_PREVIEW, BAD_LINK
from bridge.problems import problem
from bridge.storage import JOB_ID, output_mime
from engine.avatars import ID_PATTERN

bp = APIBlueprint("files", __name__, tag="files")


class LinkQuery(Schema):
    class Meta:
        unknown = RAISE  # a misspelt field is an error, not silently ignored

    exp = Integer(required=True, metadata={"description": "Expiry, seconds since the epoch."})
    sig = String(required=True, metadata={"description": "Hex HMAC-SHA256 over job id, name and expiry."})


@bp.get("/files/<job_id>/<name>")
@bp.input(LinkQuery, location="query", arg_name="query")
@bp.output({}, content_type="application/octet-stream",
           description="The file, as an attachment (video/mp4, image/jpeg, text/vtt or application/x-subrip).")
@bp.doc(summary="Download a job output through a signed link",
        responses={403: "The signature is wrong or the link has expired", 404: "No such file"})
def download(job_id: str, name: str, query: dict[str, Any]) -> Response:
    mime = output_mime(name)
    if not JOB_ID.fullmatch(job_id) or mime is None:
        return problem(404, None, "There is no resource at this URL.")
    st = state()
    reason = st.file_signer.verify(job_id, name, query["exp"], query["sig"])
    if reason is not None:
        current_app.logger.info("refused a download link for job %s (%s)", job_id, name)
        return problem(403, None, reason, BAD_LINK, code="bad_link")
    path = st.storage.output_path(job_id, name)
    if not path.is_file():
        return problem(404, None, "That job has no such file (yet).")
    return send_file(path, mimetype=mime, as_attachment=True, download_name=name, max_age=0)


@bp.get("/files/avatars/<avatar_id>/poster.jpg")
@bp.input(LinkQuery, location="query", arg_name="query")
@bp.output({}, content_type="image/jpeg", description="A still of the avatar (JPEG).")
@bp.doc(summary="An avatar's preview through a signed link",
        responses={403: "The signature is wrong or the link has expired", 404: "No such avatar"})
def avatar_preview(avatar_id: str, query: dict[str, Any]) -> Response:
    if not ID_PATTERN.fullmatch(avatar_id):
        return problem(404, None, "There is no resource at this URL.")
    st = state()
    reason = st.file_signer.verify(f"avatars/{avatar_id}", AVATAR_PREVIEW, query["exp"], query["sig"])
    if reason is not None:
        return problem(403, None, reason, BAD_LINK, code="bad_link")
    path = st.engine_settings.avatars_dir / avatar_id / AVATAR_PREVIEW
    if not path.is_file():
        return problem(404, None, "That avatar has no preview (yet).")
    return send_file(path, mimetype="image/jpeg", max_age=0)
