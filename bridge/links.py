"""Download links for job outputs, minted fresh on every read of a job.

Backend ``local``: ``/files/<job_id>/<name>?exp=<epoch>&sig=<hex>``, HMAC-SHA256 signed, expiring,
served by ``bridge.api.files``. Backend ``minio``: S3 presigned GET links for the public endpoint.
Either way the link itself is the credential (a plugin hands it to Dify, which fetches it without a
token), so it is never logged; ``install_log_redaction`` scrubs ``sig`` from the access log.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from bridge.objectstore import ObjectStore, S3Config, job_key
from bridge.problems import TYPE_BASE
from bridge.settings import BridgeSettings
from bridge.storage import output_mime

BAD_LINK = TYPE_BASE + "bad-link"
KEY_FILE = "link.key"
AVATAR_PREVIEW = "poster.jpg"


@dataclass(frozen=True, slots=True)
class SignedLink:
    url: str
    expires_at: int


def load_link_secret(settings: BridgeSettings) -> bytes:
    """The configured secret, else ``<storage_root>/link.key`` (32 random bytes, 0600, created once)."""
    if settings.link_secret is not None:
        return settings.link_secret.get_secret_value().encode()
    path = settings.storage_root / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".link.key.", dir=path.parent)  # mkstemp files are 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
            with contextlib.suppress(FileExistsError):  # atomic create-if-absent: a concurrent creator wins
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    data = path.read_bytes()
    if len(data) < 32:
        raise RuntimeError(f"{path} holds fewer than 32 bytes; delete it to make a new link key")
    return data


class LinkMinter(Protocol):
    ttl_s: int

    def sign(self, job_id: str, name: str) -> SignedLink: ...


class S3Links:
    """Presigned GET links to ``jobs/<id>/<name>``, with a download name and the right media type."""

    def __init__(self, store: ObjectStore, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def sign(self, job_id: str, name: str) -> SignedLink:
        url, expires_at = self.store.presign(job_key(job_id, name), ttl_s=self.ttl_s,
                                             download_name=f"talking-head-{job_id[:8]}-{name}",
                                             content_type=output_mime(name))
        return SignedLink(url, expires_at)


def object_store(settings: BridgeSettings) -> ObjectStore | None:
    """The S3 store when ``link_backend`` is ``minio``, else None."""
    if settings.link_backend != "minio":
        return None
    assert settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key  # checked by the settings
    return ObjectStore(S3Config(
        endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(), bucket=settings.s3_bucket, secure=settings.s3_secure,
        public_endpoint=settings.s3_public_endpoint, public_secure=settings.s3_public_secure,
        region=settings.s3_region,
    ))


def link_minter(settings: BridgeSettings, store: ObjectStore | None) -> LinkMinter:
    if store is not None:
        return S3Links(store, settings.link_ttl_s)
    return LinkSigner(load_link_secret(settings), settings.base_url, settings.link_ttl_s)


class LinkSigner:
    def __init__(self, secret: bytes, base_url: str, ttl_s: int) -> None:
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    def _sig(self, job_id: str, name: str, exp: int) -> str:
        return hmac.new(self._secret, f"{job_id}/{name}/{exp}".encode(), hashlib.sha256).hexdigest()

    def sign(self, job_id: str, name: str, now: float | None = None) -> SignedLink:
        exp = int(now if now is not None else time.time()) + self.ttl_s
        query = urlencode({"exp": exp, "sig": self._sig(job_id, name, exp)})
        return SignedLink(f"{self.base_url}/files/{job_id}/{name}?{query}", exp)

    def sign_avatar_preview(self, avatar_id: str, now: float | None = None) -> SignedLink:
        """``/files/avatars/<id>/poster.jpg``: signed over ``avatars/<id>``, which no job id can be."""
        return self.sign(f"avatars/{avatar_id}", AVATAR_PREVIEW, now)

    def verify(self, job_id: str, name: str, exp: int, sig: str, now: float | None = None) -> str | None:
        """None when the link is good, else why not (for the problem detail; never the signature)."""
        if not hmac.compare_digest(self._sig(job_id, name, exp).encode(), sig.encode("ascii", "replace")):
            return "the link's signature is not valid"
        if (now if now is not None else time.time()) > exp:
            return "the link has expired; fetch the job again for a fresh one"
        return None


class _RedactSignatures(logging.Filter):
    _SIG = re.compile(r"sig=[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(self._SIG.sub("sig=REDACTED", a) if isinstance(a, str) else a
                                for a in (record.args if isinstance(record.args, tuple) else (record.args,)))
        if isinstance(record.msg, str):
            record.msg = self._SIG.sub("sig=REDACTED", record.msg)
        return True


def install_log_redaction() -> None:
    logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, _RedactSignatures) for f in logger.filters):
        logger.addFilter(_RedactSignatures())
