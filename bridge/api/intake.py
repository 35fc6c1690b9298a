"""User media in: a multipart upload or a URL, saved under a server-made name and checked by ffprobe.

Nothing reaches a worker (or costs engine time) until ``check_media`` accepted it. A refused file is
deleted at once; the caller gets a 422 naming the field and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from apiflask import Schema
from flask import Response, request
from marshmallow import RAISE, ValidationError, pre_load
from werkzeug.datastructures import FileStorage

from bridge.api.deps import current_claims, state
from bridge.api.quotas import quota_problem
from bridge.db import IdempotencyConflict, Job, QuotaExceeded
from bridge.fetch import check_url, fetch, fetch_policy
from bridge.media_check import CheckedMedia, Expect, MediaLimits, check_media
from bridge.problems import TYPE_BASE, VALIDATION, invalid, problem
from engine import EngineError

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Intake:
    """A validated file in the scratch area; ``put_input`` moves it into a job."""

    path: Path
    media: CheckedMedia
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def refused(err: EngineError) -> Response:
    """A 422 problem from an engine, fetch or media error (their messages start with the field)."""
    field = getattr(err, "field", None)
    return problem(422, None, str(err), VALIDATION, field, code=err.code,
                   errors=[{"in": "body", "field": field or "body", "message": str(err)}])


def _checked(path: Path, expect: Expect, field: str, user_filename: str | None) -> Intake:
    try:
        media = check_media(path, expect, MediaLimits.for_engine(expect, state().engine_settings),
                            user_filename=user_filename, field=field)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return Intake(path, media, digest.hexdigest())


def take_upload(upload: FileStorage, expect: Expect, field: str) -> Intake:
    """Save a multipart part (Werkzeug already enforced the body size limit) and check it."""
    path = state().storage.scratch() / f"{uuid.uuid4().hex}.part"
    upload.save(path)
    return _checked(path, expect, field, upload.filename)


def take_url(url: str, expect: Expect, field: str) -> Intake:
    """Download with SSRF protection, a byte cap and a total timeout, then check it."""
    path = state().storage.scratch() / f"{uuid.uuid4().hex}.part"
    result = fetch(url, path, fetch_policy(state().settings), field=field)
    name = unquote(urlsplit(result.final_url).path.rsplit("/", 1)[-1]) or None
    return _checked(path, expect, field, name)


def check_callback(url: str) -> None:
    """Refuse a callback URL the notifier would refuse, at submit time."""
    check_url(url, fetch_policy(state().settings), field="callback_url")


IDEMPOTENCY_REUSED = TYPE_BASE + "idempotency-key-reused"


def insert_job(job_id: str, create: Callable[[], tuple[Job, bool]], what: str) -> tuple[Job, bool] | Response:
    """Run ``create`` (move the checked input into the job's folder, then insert its row) for a new job id.

    Whatever goes wrong, no folder is left without a row: a key reused with another ``what`` (422), a quota
    (429), a database that refused or went away (re-raised). A replay (``created`` False) keeps the first
    request's folder and drops this one's.
    """
    st = state()
    try:
        job, created = create()
    except IdempotencyConflict:
        st.storage.drop_job(job_id)
        return problem(422, None, f"this Idempotency-Key was already used with a different {what}",
                       IDEMPOTENCY_REUSED, "Idempotency-Key", code="idempotency_key_reused")
    except QuotaExceeded as exc:
        st.storage.drop_job(job_id)
        return quota_problem(exc, str(current_claims().kid), st.db, st.settings)
    except BaseException:
        st.storage.drop_job(job_id)
        raise
    if not created:
        st.storage.drop_job(job_id)
    return job, created


MAX_URL_CHARS = 2048
FORM_NULL = "null"


class UploadBody(Schema):
    """A body that comes as JSON or as multipart form fields (with a file part beside them).

    In JSON a field may be null, which means "not given". A form field is always text, so a null is spelt
    the way JSON spells it, ``null`` (as OpenAPI tools such as schemathesis send it): for the fields that may
    be null it means the same as in JSON, instead of, say, a text to speak that reads "null".
    """

    class Meta:
        unknown = RAISE  # a misspelt field is an error, not silently ignored

    @pre_load
    def _form_nulls(self, data: Any, **_: Any) -> Any:
        if request.mimetype != "multipart/form-data" or not isinstance(data, Mapping):
            return data
        nullable = {name for name, field in self.fields.items() if field.allow_none}
        return {name: None if name in nullable and data[name] == FORM_NULL else data[name] for name in data}


def url_field(value: str) -> None:
    """Schema validator for URL fields: a URL never holds whitespace or control characters (a NUL would also
    be refused by the job table); say so at once, before anything tries to resolve or store it."""
    if not 0 < len(value) <= MAX_URL_CHARS:
        raise ValidationError(f"must be 1 to {MAX_URL_CHARS} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValidationError("contains spaces or control characters; percent-encode them (%20) or fix the URL")


BODY_TYPES = ("application/json", "multipart/form-data")


F = TypeVar("F", bound=Callable[..., Any])


def json_or_multipart(view: F) -> F:
    """Refuse another body type before the body is parsed (put it between ``require_token`` and ``bp.input``)."""

    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        return content_type_problem() or view(*args, **kwargs)

    return cast(F, checked)


def content_type_problem() -> Response | None:
    """415 unless the body is JSON or multipart/form-data; 400 for a multipart type without its boundary.

    Without this, a JSON body sent as text/plain (or with no Content-Type, as curl -d does not add one but
    -H can drop) is not read at all, and the caller is told that no field was given.
    """
    if request.mimetype not in BODY_TYPES:
        sent = request.mimetype or "no Content-Type"
        return problem(415, None, f"the body is {sent}; send application/json (files as multipart/form-data), "
                       "with a Content-Type header saying so", code="unsupported_media_type",
                       accepted=list(BODY_TYPES))
    if request.mimetype == "multipart/form-data" and not request.mimetype_params.get("boundary"):
        return problem(400, None, "the multipart/form-data Content-Type has no boundary parameter; let your HTTP "
                       "client build the multipart body and its header", code="malformed_body")
    return None


def file_parts_problem(allowed: str, repeatable: frozenset[str] = frozenset()) -> Response | None:
    """A 422 unless the multipart body has at most one file part, named ``allowed``, with something in it.

    Werkzeug would keep a misspelt part, a second copy or an empty "no file chosen" part without a word; the
    caller would then get an error about another field, or a job made from the wrong file.
    """
    for name in request.files:
        if name != allowed:
            return _part_problem(name, f"unknown file part {name!r}; the file goes in the part named {allowed!r}")
    for name in request.form:
        count = len(request.form.getlist(name))
        if count > 1 and name not in repeatable:
            return _part_problem(name, f"{count} form fields named {name!r}; send it once")
    parts = request.files.getlist(allowed)
    if len(parts) > 1:
        return _part_problem(allowed, f"{len(parts)} file parts named {allowed!r}; send exactly one")
    if parts and _part_size(parts[0]) == 0:
        return _part_problem(allowed, "the file part is empty; attach the file (a browser sends an empty part when "
                                      "no file was chosen)")
    return None


def _part_size(upload: FileStorage) -> int:
    stream = upload.stream
    position = stream.tell()
    size = stream.seek(0, 2)
    stream.seek(position)
    return int(size)


def _part_problem(field: str, message: str) -> Response:
    return invalid(field, message, "invalid_part", "files")
