"""API keys: ``thk_<kid>_<secret>`` strings, stored in a 0600 JSON file, revocable at once.

The plugin holds the whole key and signs short-lived JWTs with the secret; the bridge looks the
secret up by ``kid``. The file is the source of truth for revocation and is re-read whenever it
changes on disk, so ``python -m bridge keys revoke`` takes effect on the next request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KEY_PREFIX = "thk"
MIN_SECRET_BYTES = 32
_KEY_RE = re.compile(r"thk_(?P<kid>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]+)")
KID_RE = re.compile(r"[0-9a-f]{8}")
_FILE_VERSION = 1


class KeyFileError(RuntimeError):
    """The keys file is unreadable, malformed or too permissive."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: everything but the secret."""

    kid: str
    created_at: str | None
    admin: bool
    revoked: bool
    source: str = "file"


@dataclass(frozen=True, slots=True)
class _Record:
    info: KeyInfo
    secret: bytes | None = field(repr=False)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def format_api_key(kid: str, secret: bytes) -> str:
    return f"{KEY_PREFIX}_{kid}_{_b64url(secret)}"


def parse_api_key(key: str) -> tuple[str, bytes]:
    """Split ``thk_<kid>_<secret>`` into the key id and the raw secret. Messages never echo the secret."""
    if not isinstance(key, str) or not key.startswith(f"{KEY_PREFIX}_"):
        raise ValueError("API key must start with 'thk_'")
    match = _KEY_RE.fullmatch(key.strip())
    if match is None:
        raise ValueError("API key must look like thk_<8 lowercase hex kid>_<base64url secret>")
    try:
        secret = _b64url_decode(match["secret"])
    except (binascii.Error, ValueError):
        raise ValueError("API key secret is not valid base64url") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"API key secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required")
    return match["kid"], secret


def parse_env_keys(keys: Iterable[str]) -> dict[str, bytes]:
    """Parse BRIDGE_API_KEYS entries, naming a bad one by position only."""
    parsed: dict[str, bytes] = {}
    for position, key in enumerate(keys, start=1):
        try:
            kid, secret = parse_api_key(key)
        except ValueError as exc:
            raise ValueError(f"BRIDGE_API_KEYS entry #{position}: {exc}") from None
        parsed[kid] = secret
    return parsed


def check_private(path: Path) -> None:
    """Refuse a keys file that group or others can read or write (it holds signing secrets)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"keys file {path} has mode {mode:04o}; it must be readable by its owner only (run: chmod 600 {path})"
        )


class KeyStore:
    """The keys file plus optional keys from the environment (``env_keys``: kid → secret).

    Thread-safe; cheap to call per request (one ``stat`` unless the file changed).
    """

    def __init__(self, path: Path, env_keys: dict[str, bytes] | None = None) -> None:
        self.path = Path(path)
        self._env_keys = dict(env_keys or {})
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: dict[str, _Record] = {}

    def create(self, admin: bool = False) -> str:
        """Add a key and return the full key string; this is the only time the secret is shown."""
        with self._exclusive() as records:
            kid = secrets.token_hex(4)
            while kid in records or kid in self._env_keys:
                kid = secrets.token_hex(4)
            secret = secrets.token_bytes(MIN_SECRET_BYTES)
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            records[kid] = _Record(KeyInfo(kid, created, admin, revoked=False), secret)
        return format_api_key(kid, secret)

    def list(self) -> list[KeyInfo]:
        records = self._current()
        infos = [record.info for record in records.values()]
        infos += [KeyInfo(kid, None, False, False, "env") for kid in self._env_keys if kid not in records]
        return sorted(infos, key=lambda info: (info.created_at or "", info.kid))

    def get(self, kid: str) -> KeyInfo | None:
        record = self._current().get(kid)
        if record is not None:
            return record.info
        return KeyInfo(kid, None, False, False, "env") if kid in self._env_keys else None

    def revoke(self, kid: str) -> None:
        """Revoke a key; an environment key gets a tombstone in the file so it stays revoked."""
        with self._exclusive() as records:
            record = records.get(kid)
            if record is not None:
                records[kid] = _Record(KeyInfo(kid, record.info.created_at, record.info.admin, True), None)
            elif kid in self._env_keys:
                records[kid] = _Record(KeyInfo(kid, None, False, True, "env"), None)
            else:
                raise KeyError(kid)

    def secret_for(self, kid: str) -> bytes | None:
        """The signing secret for ``kid``, or None when the key is unknown or revoked."""
        record = self._current().get(kid)
        if record is not None:
            return None if record.info.revoked else record.secret
        return self._env_keys.get(kid)

    def _current(self) -> dict[str, _Record]:
        """The file's records, re-read when its inode, size or mtime changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            with self._lock:
                self._stamp, self._records = None, {}
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                self._records = self._read()
                self._stamp = stamp
            return self._records

    def _read(self) -> dict[str, _Record]:
        check_private(self.path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {item["kid"]: _decode_record(item) for item in data["keys"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"keys file {self.path} is malformed: {type(exc).__name__}") from None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[dict[str, _Record]]:
        """Read-modify-write under an flock so concurrent CLI calls don't lose each other's keys."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            records = dict(self._read()) if self.path.exists() else {}
            yield records
            self._write(records)
        finally:
            os.close(lock_fd)

    def _write(self, records: dict[str, _Record]) -> None:
        """Write atomically (temp file + os.replace) with mode 0600 regardless of the umask."""
        body = json.dumps({"version": _FILE_VERSION, "keys": [_encode_record(r) for r in records.values()]}, indent=2)
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _encode_record(record: _Record) -> dict[str, Any]:
    info = record.info
    return {
        "kid": info.kid,
        "secret": _b64url(record.secret) if record.secret is not None else None,
        "created_at": info.created_at,
        "admin": info.admin,
        "revoked": info.revoked,
        "source": info.source,
    }


def _decode_record(item: dict[str, Any]) -> _Record:
    kid = item["kid"]
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ValueError("bad kid")
    secret = _b64url_decode(item["secret"]) if item.get("secret") else None
    revoked = bool(item.get("revoked", False))
    if not revoked and (secret is None or len(secret) < MIN_SECRET_BYTES):
        raise ValueError("secret too short")
    info = KeyInfo(kid, item.get("created_at"), bool(item.get("admin", False)), revoked, item.get("source", "file"))
    return _Record(info, secret)
