"""The plugin's only way to the bridge: per-call JWTs minted from the admin's API key, and HTTP calls that
turn every failure into a sentence a Dify user or admin can act on.

The key never leaves this process: each request carries a fresh HS256 token (kid header, typ ``th+jwt``,
120 s lifetime, uuid4 ``jti``) that names the Dify user as ``sub`` and asks for only the scopes it needs.

A client made for a tool call carries that call's deadline (tools/call_limits.py): no request, retry pause or
download outlasts it, so the plugin always answers before Dify's daemon ends the call.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import IO, Any
from urllib.parse import urlsplit

import jwt
import requests
from urllib3.exceptions import ReadTimeoutError

from tools.call_limits import MIB, CallDeadline

ISSUER = "talking-head-dify-plugin"
AUDIENCE = "talking-head-bridge"
TOKEN_TYPE = "th+jwt"
TOKEN_LIFETIME_S = 120
KEY_PATTERN = re.compile(r"thk_(?P<kid>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43,})")
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
DOWNLOAD_STALL_S = 15.0
"""The longest silence a video download may have. Its total is bounded by the call's deadline, checked between
chunks; a read already waiting may end up to this long after it, which the call's margins after the download
(call_limits.HANDOVER_S, MARGIN_S) cover."""
DOWNLOAD_CHUNK = 1 << 16
RETRIES = 3
"""Attempts for a call that failed to connect or got 502/503/504 (every call here is safe to repeat)."""


class BridgeError(Exception):
    """A failed call, said so that whoever reads it knows what to do next."""


class OutOfTime(BridgeError):
    """The tool call's deadline came before the bridge's answer (or the whole file) did."""


class FileTooLarge(BridgeError):
    """The file behind a link is larger than the caller's cap; nothing more of it is read."""


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    base_url: str
    kid: str
    secret: bytes

    @classmethod
    def from_credentials(cls, credentials: Mapping[str, Any]) -> BridgeConfig:
        url = str(credentials.get("bridge_url") or "").strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise BridgeError("Bridge URL must look like http://bridge-host:8808 or https://bridge.example.com")
        if parts.query or parts.fragment:
            raise BridgeError("Bridge URL must not carry a query string or fragment")
        key = str(credentials.get("api_key") or "").strip()
        match = KEY_PATTERN.fullmatch(key)
        if match is None:
            raise BridgeError("API key must be the whole thk_… string that `python -m bridge keys create` printed")
        try:
            secret = base64.urlsafe_b64decode(match["secret"] + "=" * (-len(match["secret"]) % 4))
        except (binascii.Error, ValueError):
            raise BridgeError("API key is damaged: its secret part is not valid base64url") from None
        return cls(url, match["kid"], secret)


@dataclass(frozen=True, slots=True)
class Upload:
    """A file to send as a multipart part."""

    field: str
    filename: str
    stream: IO[bytes]
    mime_type: str


class BridgeClient:
    def __init__(self, config: BridgeConfig, user_id: str | None, timeout_s: float = READ_TIMEOUT_S,
                 deadline: CallDeadline | None = None) -> None:
        self.config = config
        self.user_id = user_id or "dify-user"
        self.timeout = (CONNECT_TIMEOUT_S, timeout_s)
        self.deadline = deadline or CallDeadline.start()
        self._http = requests.Session()
        self._http.trust_env = False  # the bridge is on the admin's network; no proxy from the environment

    def token(self, scopes: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": self.user_id, "iat": now, "nbf": now,
                  "exp": now + TOKEN_LIFETIME_S, "jti": str(uuid.uuid4()), "scope": scopes}
        return jwt.encode(claims, self.config.secret, algorithm="HS256",
                          headers={"kid": self.config.kid, "typ": TOKEN_TYPE})

    # --- endpoints -------------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return self._call("GET", "/v1/whoami", "jobs:read")

    def voices(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/voices", "jobs:read")["voices"])

    def avatars(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/avatars", "jobs:read")["avatars"])

    def job(self, job_id: str) -> dict[str, Any]:
        if not re.fullmatch(r"[0-9a-f]{32}", job_id.strip()):
            raise BridgeError(f"{job_id!r} is not a job id: job ids are 32 hexadecimal characters")
        return self._call("GET", f"/v1/jobs/{job_id.strip()}", "jobs:read")

    def submit(self, fields: Mapping[str, Any], upload: Upload | None = None) -> dict[str, Any]:
        """POST /v1/jobs; a retry after a lost answer reuses the Idempotency-Key, so it never makes two jobs."""
        body = {k: v for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        if upload is None:
            return self._call("POST", "/v1/jobs", "jobs:read jobs:write", json=body, headers=headers)
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in body.items()}
        return self._call("POST", "/v1/jobs", "jobs:read jobs:write", data=form, upload=upload, headers=headers)

    def create_avatar(self, name: str, upload: Upload | None = None, url: str | None = None) -> dict[str, Any]:
        """POST /v1/avatars with the face uploaded as a part, or as a ``url`` the bridge fetches itself."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        if upload is None:
            return self._call("POST", "/v1/avatars", "jobs:read avatars:write", json={"name": name, "url": url},
                              headers=headers)
        return self._call("POST", "/v1/avatars", "jobs:read avatars:write", data={"name": name}, upload=upload,
                          headers=headers)

    def download(self, url: str, max_bytes: int, until: float | None = None) -> bytes:
        """The file behind a job link, all of it by ``until`` (on the deadline's clock; the call's end if None).

        Raises FileTooLarge past ``max_bytes``, and OutOfTime when ``until`` comes first or the link stalls
        (no byte for ``DOWNLOAD_STALL_S``, or for what is left when that is less); reading stops there.
        """
        end = self.deadline.ends_at if until is None else min(until, self.deadline.ends_at)
        left = self.deadline.left(end)
        if left <= 0:
            raise OutOfTime("no time was left to download the video")
        try:
            with self._http.get(url, stream=True, timeout=(min(CONNECT_TIMEOUT_S, left),
                                                           min(DOWNLOAD_STALL_S, left))) as response:
                if response.status_code != 200:
                    raise BridgeError(f"The video link answered HTTP {response.status_code}; fetch the job again "
                                      "for a fresh link")
                declared = response.headers.get("Content-Length") or ""
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FileTooLarge(f"the video is {int(declared) / MIB:.1f} MB")
                chunks, size = [], 0
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLarge(f"the video is more than {max_bytes / MIB:.1f} MB")
                    if self.deadline.left(end) <= 0:
                        raise OutOfTime(f"the video had not fully arrived ({size / MIB:.1f} MB) when the time for "
                                        "it ran out")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.RequestException as exc:
            if self.deadline.left(end) <= 0:
                raise OutOfTime("the time for the video ran out before all of it had arrived") from None
            if isinstance(exc, requests.ReadTimeout) or (exc.args and isinstance(exc.args[0], ReadTimeoutError)):
                raise OutOfTime("the video link stopped sending before all of the video had arrived") from None
            raise BridgeError(f"Could not download the video from the bridge ({type(exc).__name__}); "
                              "check that Dify's plugin daemon can reach the bridge's link host") from None

    # --- plumbing --------------------------------------------------------------------------------

    def _call(self, method: str, path: str, scopes: str, *, json: Any = None, data: Mapping[str, str] | None = None,
              upload: Upload | None = None, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        url = self.config.base_url + path
        for attempt in range(1, RETRIES + 1):
            left = self.deadline.left()
            if left <= 0:
                raise OutOfTime(f"This tool call had no time left to ask the bridge at {self.config.base_url}")
            if upload is not None:
                upload.stream.seek(0)
            files = {upload.field: (upload.filename, upload.stream, upload.mime_type)} if upload else None
            try:
                response = self._http.request(
                    method, url, json=json, data=data, files=files,
                    timeout=(min(self.timeout[0], left), min(self.timeout[1], left)),
                    headers={"Authorization": f"Bearer {self.token(scopes)}", "Accept": "application/json",
                             **(headers or {})})
            except requests.ConnectionError:
                if attempt == RETRIES or not self._pause(attempt):
                    raise BridgeError(f"Cannot reach the bridge at {self.config.base_url}: nothing answered. Check "
                                      "the URL and that the plugin daemon's network can reach that host and port"
                                      ) from None
                continue
            except requests.Timeout:
                if self.deadline.left() <= 0:
                    raise OutOfTime(f"The bridge at {self.config.base_url} did not answer before this tool call's "
                                    "time ran out") from None
                raise BridgeError(f"The bridge at {self.config.base_url} did not answer within "
                                  f"{self.timeout[1]:.0f} s") from None
            except requests.RequestException as exc:
                raise BridgeError(f"Calling the bridge at {self.config.base_url} failed "
                                  f"({type(exc).__name__})") from None
            if response.status_code in {502, 503, 504} and attempt < RETRIES \
                    and self._pause(min(_seconds(response.headers.get("Retry-After"), attempt), 5.0)):
                continue
            return self._result(response)
        raise AssertionError("unreachable")

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; False, without waiting, when the call's deadline leaves no time for one."""
        if seconds >= self.deadline.left():
            return False
        time.sleep(seconds)
        return True

    def _result(self, response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BridgeError(f"{self.config.base_url} answered HTTP {response.status_code} but not like a Talking "
                              "Head bridge. Check the Bridge URL (scheme, host and port of `python -m bridge serve`)")
        if response.status_code < 400:
            return body
        detail = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
        code = body.get("code")
        if response.status_code == 401:
            raise BridgeError(self._auth_message(code, detail, response))
        if response.status_code == 403:
            raise BridgeError(f"The bridge refused this API key for that action: {detail}")
        if response.status_code == 413:
            raise BridgeError(f"The file is larger than the bridge accepts: {detail}")
        if response.status_code in {404, 409, 410, 422}:
            raise BridgeError(detail[:1].upper() + detail[1:])
        if response.status_code == 429:  # a per-key quota of the bridge: the workspace holds too much at once
            wait = response.headers.get("Retry-After")
            raise BridgeError(f"This workspace reached a limit of the bridge: {detail}"
                              + (f" (try again in {wait} s)" if wait and wait.isdigit() else ""))
        if response.status_code == 503:
            raise BridgeError(f"The bridge is not ready ({detail}); try again in a minute")
        raise BridgeError(f"The bridge failed (HTTP {response.status_code}): {detail}")

    def _auth_message(self, code: Any, detail: str, response: requests.Response) -> str:
        if code in {"unknown_key", "revoked_key"}:
            return (f"The bridge does not accept API key {self.config.kid}: {detail}. Create a new one with "
                    "`python -m bridge keys create` and paste it here")
        if code in {"expired", "not_yet_valid"}:
            skew = _clock_skew(response)
            said = f" (this host's clock is {skew:+.0f} s off the bridge's)" if skew is not None else ""
            return (f"The bridge refused the token as {code.replace('_', ' ')}{said}. The clocks of Dify and the "
                    "bridge must agree within 30 s: enable NTP on both hosts")
        if code == "bad_signature" or "signature" in detail:
            return "The API key's secret does not match the bridge's: paste the whole key again"
        return f"The bridge refused the credentials: {detail}"


def _seconds(value: str | None, default: float) -> float:
    """A Retry-After given in seconds; ``default`` for anything else (an HTTP date, nothing)."""
    return float(value) if value and value.isdigit() else default


def _clock_skew(response: requests.Response) -> float | None:
    try:
        return time.time() - parsedate_to_datetime(response.headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
