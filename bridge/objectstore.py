"""Job files in S3, the ``minio`` link backend: a private bucket, and presigned download links.

SigV4 signs the ``Host`` header, so a link verifies only at the host it was signed for (rewriting the
host afterwards gives 403). Hence two clients: one talks to ``endpoint``, the address the bridge reaches
(uploads, deletes, the readiness ping); the other is built for ``public_endpoint``, the host clients
download from, and only signs. Its region is given, so minio never asks the server for it, and its
connection pool refuses to connect: signing is pure computation and works where the public host is
unreachable from the bridge. A reverse proxy in front of the public host must pass ``Host`` through.

Keys are server-made, ``jobs/<job id>/<output name>``, and checked against a strict pattern, so no user
string ever becomes a key. No bucket policy is ever set: objects are readable only through a link.
S3 failures raise ``ObjectStoreError``, whose message names the step and the cause, never a credential
or a signed URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from bridge.storage import JOB_ID, OUTPUT_NAME

HOST_PORT = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
REGION = re.compile(r"[a-z0-9-]{1,32}")
KEY = re.compile(rf"jobs/{JOB_ID.pattern}/(?:{OUTPUT_NAME.pattern})")
PREFIX = re.compile(rf"jobs/{JOB_ID.pattern}/")
DOWNLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Safe inside ``filename="..."`` as is: no quote, backslash, control character or path separator."""
MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(?:; ?[\w.+-]+=[\w.+-]+)*")
MAX_TTL_S = 7 * 24 * 3600
"""The longest a SigV4 presigned URL may live."""
_FAILURES = (MinioException, HTTPError, OSError)


class ObjectStoreError(Exception):
    """S3 refused or could not be reached. The message is safe to log and to show."""


@dataclass(frozen=True)
class S3Config:
    """Where the bucket lives.

    Endpoints are ``host[:port]`` without a scheme, as minio takes them; ``secure`` picks https. A URL
    is refused rather than guessed at. ``public_endpoint`` and ``public_secure`` default to ``endpoint``
    and ``secure``. The region is explicit (no lookup): it is part of every signature.
    """

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    secure: bool = True
    public_endpoint: str | None = None
    public_secure: bool | None = None
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        for name in ("endpoint", "public_endpoint"):
            value = getattr(self, name)
            if value is not None and not HOST_PORT.fullmatch(value):
                raise ValueError(f"S3 {name} must be host[:port] without a scheme or path (secure picks https)")
        if not BUCKET.fullmatch(self.bucket) or ".." in self.bucket:
            raise ValueError("S3 bucket must be 3-63 characters of a-z, 0-9, '.' and '-'")
        if not REGION.fullmatch(self.region):
            raise ValueError("S3 region must be a region name such as us-east-1")
        if not self.access_key or not self.secret_key:
            raise ValueError("S3 access key and secret key are required")

    @property
    def link_endpoint(self) -> str:
        return self.public_endpoint or self.endpoint

    @property
    def link_secure(self) -> bool:
        return self.secure if self.public_secure is None else self.public_secure


def check_key(key: str) -> str:
    if not KEY.fullmatch(key):
        raise ValueError("not an object key this bridge makes")
    return key


def job_key(job_id: str, name: str) -> str:
    """The key of one output file of a job: ``jobs/<id>/<name>``."""
    return check_key(f"jobs/{job_id}/{name}")


def job_prefix(job_id: str) -> str:
    """Everything a job stored, for ``delete_prefix``."""
    prefix = f"jobs/{job_id}/"
    if not PREFIX.fullmatch(prefix):
        raise ValueError("not a job id")
    return prefix


class _Offline(urllib3.PoolManager):
    """The signer's pool: any request is a bug (a region lookup would be one), so it fails loudly."""

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> NoReturn:
        raise ObjectStoreError("the link signer made a network request; is the region set?")


def _pool(connect_s: float, read_s: float, retries: urllib3.Retry) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_s, read=read_s), retries=retries, maxsize=10,
        cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


class ObjectStore:
    def __init__(self, config: S3Config, *, timeout_s: float = 2.0, transfer_timeout_s: float = 60.0) -> None:
        """``timeout_s`` bounds connecting and the readiness ping; ``transfer_timeout_s`` one socket read.

        minio's own pool waits 5 minutes and retries 5 times, which would hang ``/readyz`` on a dead S3.
        """
        self.config = config
        keys = {"access_key": config.access_key, "secret_key": config.secret_key, "region": config.region}
        self._s3 = Minio(config.endpoint, secure=config.secure, **keys, http_client=_pool(
            timeout_s, transfer_timeout_s, urllib3.Retry(total=3, backoff_factor=0.2,
                                                         status_forcelist=(500, 502, 503, 504))))
        self._probe = Minio(config.endpoint, secure=config.secure, **keys,
                            http_client=_pool(timeout_s, timeout_s, urllib3.Retry(total=0)))
        self._signer = Minio(config.link_endpoint, secure=config.link_secure, **keys, http_client=_Offline())

    @property
    def bucket(self) -> str:
        return self.config.bucket

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing. It stays private: no policy is set."""
        try:
            if not self._s3.bucket_exists(self.bucket):
                self._s3.make_bucket(self.bucket, location=self.config.region)
        except S3Error as exc:
            if exc.code != "BucketAlreadyOwnedByYou":  # a concurrent creator won the race: fine
                self._fail(f"creating bucket {self.bucket}", exc)
        except _FAILURES as exc:
            self._fail(f"creating bucket {self.bucket}", exc)

    def upload(self, key: str, path: Path, content_type: str) -> None:
        check_key(key)
        if not MEDIA_TYPE.fullmatch(content_type):
            raise ValueError("not a media type")
        try:
            self._s3.fput_object(self.bucket, key, str(path), content_type=content_type)
        except _FAILURES as exc:
            self._fail(f"uploading {key}", exc)

    def presign(self, key: str, *, ttl_s: int, download_name: str | None = None,
                content_type: str | None = None) -> tuple[str, int]:
        """A GET link for the public host and when it expires (epoch seconds). No network call.

        ``download_name`` makes the response ``attachment; filename="<name>"``; ``content_type``
        overrides the stored type. Both are signed into the link.
        """
        check_key(key)
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be 1 to {MAX_TTL_S} seconds")
        headers: dict[str, str | list[str] | tuple[str]] = {}
        if download_name is not None:
            if not DOWNLOAD_NAME.fullmatch(download_name):
                raise ValueError("download_name must be letters, digits, '.', '_' and '-'")
            headers["response-content-disposition"] = f'attachment; filename="{download_name}"'
        if content_type is not None:
            if not MEDIA_TYPE.fullmatch(content_type):
                raise ValueError("not a media type")
            headers["response-content-type"] = content_type
        now = datetime.now(UTC).replace(microsecond=0)  # X-Amz-Date has whole seconds: expires_at is exact
        url = self._signer.presigned_get_object(self.bucket, key, expires=timedelta(seconds=ttl_s),
                                                response_headers=headers or None, request_date=now)
        return url, int(now.timestamp()) + ttl_s

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``jobs/<id>/`` (retention); returns how many there were."""
        if not PREFIX.fullmatch(prefix):
            raise ValueError("only a job's prefix, jobs/<id>/, can be deleted")
        try:
            keys = [obj.object_name for obj in self._s3.list_objects(self.bucket, prefix=prefix, recursive=True)
                    if obj.object_name]
            errors = list(self._s3.remove_objects(self.bucket, (DeleteObject(key) for key in keys)))
        except _FAILURES as exc:
            self._fail(f"deleting {prefix}", exc)
        if errors:
            raise ObjectStoreError(f"deleting {prefix}: {len(errors)} of {len(keys)} objects failed "
                                   f"({errors[0].code})")
        return len(keys)

    def ping(self) -> str | None:
        """None when the bucket answers, else a short reason (for ``/readyz``). Bounded by about 2 × timeout_s."""
        try:
            if self._probe.bucket_exists(self.bucket):
                return None
            return f"bucket {self.bucket} does not exist"
        except _FAILURES as exc:
            return f"S3 at {self.config.endpoint}: {_reason(exc)}"

    def _fail(self, step: str, exc: BaseException) -> NoReturn:
        raise ObjectStoreError(f"{step} at {self.config.endpoint}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """What went wrong, in a few words. Never ``str(exc)``: urllib3's messages carry request URLs."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, S3Error):
        return exc.code or "S3 error"
    if isinstance(exc, ServerError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, InvalidResponseError):
        return "not an S3 response"
    if isinstance(exc, NameResolutionError):
        return "host name does not resolve"
    if isinstance(exc, NewConnectionError):
        cause = exc.__cause__
        return cause.strerror if isinstance(cause, OSError) and cause.strerror else "cannot connect"
    if isinstance(exc, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(exc, ReadTimeoutError):
        return "no answer in time"
    if isinstance(exc, SSLError):
        return "TLS handshake failed"
    if isinstance(exc, ProtocolError):
        return "connection dropped"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
