"""Local download links: ``/files/<job_id>/<name>?exp=<epoch>&sig=<hex>``, HMAC-SHA256 signed, expiring.

The link itself is the credential (a plugin hands it to Dify, which fetches it without a token), so
it is never logged; ``install_log_redaction`` scrubs ``sig`` from the development server's access log.
The download view is ``bridge.api.files``.
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
from urllib.parse import urlencode

from bridge.problems import TYPE_BASE
from bridge.settings import BridgeSettings

BAD_LINK = TYPE_BASE + "bad-link"
KEY_FILE = "link.key"


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
