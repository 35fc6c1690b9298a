"""User media in: a multipart upload or a URL, saved under a server-made name and checked by ffprobe.

Nothing reaches a worker (or costs engine time) until ``check_media`` accepted it. A refused file is
deleted at once; the caller gets a 422 naming the field and the fix.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from flask import Response
from werkzeug.datastructures import FileStorage

from bridge.api.deps import state
from bridge.fetch import check_url, fetch, fetch_policy
from bridge.media_check import CheckedMedia, Expect, MediaLimits, check_media
from bridge.problems import VALIDATION, problem
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
