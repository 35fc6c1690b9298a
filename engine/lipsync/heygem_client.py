"""HTTP client for HeyGem's video service: ``/easy/submit`` and ``/easy/query``, replies mapped to types.

The codes are those the service really answers (9999 and 10000-10004); see
``tests/standins/heygem_video.py`` for where each fact comes from. Polling treats a dropped connection,
a timeout or an HTTP 5xx as transient: HeyGem keeps rendering while a proxy or the network blinks, and
a job given up on then would leave a task that keeps the service busy with nobody reading its result.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

from ..errors import BackendFailed, BackendUnavailable

log = logging.getLogger(__name__)

CODE_OK, CODE_BUSY, CODE_NOT_FOUND = 10000, 10001, 10004
STATUS_RUNNING, STATUS_DONE, STATUS_FAILED = 1, 2, 3
MAX_BACKOFF_S = 30.0


def normalize_base_url(url: str) -> str:
    """The service root: HeyGem's client configures ``http://host:8383/easy``, ours ``http://host:8383``."""
    base = url.strip().rstrip("/")
    return base[: -len("/easy")] if base.endswith("/easy") else base


@dataclass(frozen=True)
class TaskState:
    """One ``/easy/query`` answer for a known task."""

    status: int
    progress: float  # 0..100
    result: str
    msg: str

    @property
    def done(self) -> bool:
        return self.status == STATUS_DONE

    @property
    def failed(self) -> bool:
        return self.status == STATUS_FAILED


class TransientError(BackendUnavailable):
    """The service could not be asked right now; asking again later may work."""


class HeyGemClient:
    """The two calls; ``wait`` between retries is an event so a caller can stop it at once."""

    def __init__(self, base_url: str, timeout_s: float, stop: threading.Event | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self._stop = stop or threading.Event()

    def close(self) -> None:
        self.session.close()

    def sleep(self, seconds: float) -> None:
        self._stop.wait(max(seconds, 0.0))

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url, where = f"{self.base_url}{path}", f"HeyGem at {self.base_url}"
        try:
            reply = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError as exc:
            raise TransientError(f"{where} cannot be reached ({type(exc).__name__})") from exc
        except requests.Timeout as exc:
            raise TransientError(f"{where} did not answer within {self.timeout_s:g} s") from exc
        if reply.status_code >= 500:
            raise TransientError(f"HeyGem {path} answered HTTP {reply.status_code}: {reply.text[:200]}")
        if reply.status_code != 200:
            raise BackendFailed(f"HeyGem {path} answered HTTP {reply.status_code}: {reply.text[:200]}")
        try:
            body = reply.json()
        except ValueError as exc:
            raise BackendFailed(f"HeyGem {path} did not answer JSON: {reply.text[:200]}") from exc
        if not isinstance(body, dict):
            raise BackendFailed(f"HeyGem {path} answered {body!r}")
        return body

    def submit(self, payload: dict[str, Any], deadline: float, poll_s: float, timeout_s: float) -> None:
        """Submit, retrying with backoff while HeyGem is busy (it runs one task at a time)."""
        backoff = poll_s
        while True:
            body = self._call("POST", "/easy/submit", json=payload)
            code = body.get("code")
            if code == CODE_OK:
                return
            if code != CODE_BUSY:
                raise BackendFailed(f"HeyGem refused the task ({code}): {body.get('msg') or 'no message'}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendFailed(f"HeyGem stayed busy with another task for {timeout_s:g} s; if it never "
                                    "finishes, restart the HeyGem container")
            log.info("HeyGem is busy; retrying in %.1f s", backoff)
            self.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, max(poll_s, MAX_BACKOFF_S))

    def query(self, code: str) -> TaskState:
        """One status read. A terminal status is answered once; after it the service answers 10004."""
        body = self._call("GET", "/easy/query", params={"code": code})
        reply_code, msg = body.get("code"), str(body.get("msg") or "no message")
        if reply_code == CODE_NOT_FOUND:
            raise BackendFailed(f"HeyGem no longer knows task {code} (10004); it forgets a task once its "
                                "result has been read, or when it restarts")
        if reply_code != CODE_OK:
            raise BackendFailed(f"HeyGem query failed ({reply_code}): {msg}")
        data = body.get("data") or {}
        try:
            progress = min(max(float(data.get("progress") or 0), 0.0), 100.0)
        except (TypeError, ValueError):
            progress = 0.0
        status = data.get("status")
        return TaskState(status=status if isinstance(status, int) else STATUS_RUNNING, progress=progress,
                         result=str(data.get("result") or ""), msg=str(data.get("msg") or msg))

    def query_retrying(self, code: str, retry_s: float, poll_s: float) -> TaskState:
        """``query``, retrying transient errors with backoff for up to ``retry_s``."""
        give_up = time.monotonic() + retry_s
        backoff = poll_s
        while True:
            try:
                return self.query(code)
            except TransientError as exc:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    raise BackendUnavailable(f"{exc}; retried for {retry_s:g} s (ENGINE_HEYGEM_POLL_RETRY_S)") \
                        from exc
                log.warning("polling HeyGem failed (%s); retrying in %.1f s", exc, backoff)
                self.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def probe(self) -> None:
        """Raises unless the service answers a query the way HeyGem does (10004 for an unknown code)."""
        body = self._call("GET", "/easy/query", params={"code": "talking-head-readiness-probe"})
        if body.get("code") not in (CODE_OK, CODE_NOT_FOUND):
            raise BackendFailed(f"answered {str(body)[:120]}, not like HeyGem's video service")
