"""Request bodies: size limits and a reading deadline, enforced while the body streams in.

Nothing here reads a body. The view reads it (APIFlask's ``@bp.input`` runs after ``require_token``), so an
unauthenticated client is answered before any of its body is needed. ``BodyGuard`` wraps ``wsgi.input`` so that
whatever reads it, the JSON parser or Werkzeug's multipart parser, meets the same limits on Content-Length and
chunked bodies alike:

- a declared Content-Length over the limit is refused before the first byte is read;
- a body that grows past the limit while streaming is refused one byte past it (nothing is truncated);
- a body still arriving ``timeout_s`` after the request started is refused with 408. A blocked ``recv`` cannot
  watch a clock, so a timer shuts the socket's read side, which wakes it;
- at most ``readers`` requests per process read a body at once (a few threads fewer than the process has),
  and at most half of those for any one API key: a client with a valid token that trickles its body holds a
  thread until the deadline, and without these caps twenty of them would hold every thread, ``/livez``
  included, or every slot, so that no other tenant could submit. One more gets 503 with Retry-After;
- a refused body is not read, but the client may still be sending it, and most clients (python-requests, so
  the Dify plugin) read the answer only once they have sent everything. Closing at once would make the
  kernel reset the connection, and the client would never see its 401 or 413. So the connection is handed
  to a lingering thread that half-closes it and discards what still arrives, for a bounded time and size, as
  nginx's lingering close does; gunicorn's own thread and main loop are free at once.

A response sent before its request's body was read to the end also shuts the socket down once the response is
out. Otherwise gunicorn would drain the rest of the body on keep-alive, holding a thread, or linger on it in its
main loop while closing, which stalls every other connection of that worker.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import g, has_request_context
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, RequestTimeout, ServiceUnavailable
from werkzeug.wsgi import ClosingIterator

from bridge import problems

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Response

    from bridge.settings import BridgeSettings

MULTIPART = "multipart/form-data"
MAX_FORM_PARTS = 64
"""Parts in one multipart body (Werkzeug's ``MAX_FORM_PARTS``): the largest form, ten ``avatar_ids`` and every other
field of ``POST /v1/jobs``, has about 25."""
MAX_FORM_FIELD_BYTES = 256 * 1024
"""A multipart field other than a file, held in memory (Werkzeug's ``MAX_FORM_MEMORY_SIZE``). Werkzeug also checks
its read buffer against it, and reads 64 KiB at a time, so it must stay well above that; the fields' own validation
(text at most 2,000 characters) refuses far less with a 422."""

FREE_THREADS = 2
"""Threads of each API process that body reading never takes: for /livez, polls and small requests."""
SLOT_WAIT_S = 0.2
"""How long a request waits for a reading slot: bursts of quick bodies pass, a thread is never held long."""
BUSY_RETRY_S = 2
LINGER_S = 10.0
"""How long a refused body is drained at most, so its client gets to read the answer."""
LINGER_READ_S = 2.0
"""A lingering connection that sends nothing for this long is closed."""
MAX_LINGERING = 16
LINGER_MIN_BYTES = 256 << 20
"""A refused body is drained up to twice the upload limit (at least this): past that, its client is cut off."""
"""Connections one process drains at once; past that, a refused body's connection is closed at once."""


class BodyTooLarge(RequestEntityTooLarge):
    """413 with a message naming the limit that was passed."""


class BodyTooSlow(RequestTimeout):
    """408: the body did not arrive in time."""


class BodyCutShort(BadRequest):
    """400: the body ended before the length its Content-Length announced."""


class TooManyBodies(ServiceUnavailable):
    """503: every body-reading slot of this process is taken (by slow uploads); retry shortly."""


@dataclass(frozen=True)
class BodyLimits:
    """``max_bytes`` for multipart bodies (the only ones carrying files), ``max_json_bytes`` for every other body
    (JSON; no endpoint takes a raw upload), ``timeout_s`` for the whole body to arrive."""

    max_bytes: int
    max_json_bytes: int
    timeout_s: float
    readers: int = 0
    """Requests of one process that may read a body at the same time (0: no cap)."""

    @classmethod
    def from_settings(cls, settings: BridgeSettings) -> BodyLimits:
        return cls(settings.max_content_length, min(settings.max_json_length, settings.max_content_length),
                   settings.body_timeout_s, readers=max(1, settings.api_threads - FREE_THREADS))

    def refusal(self, content_type: str) -> tuple[int, str]:
        """The limit for a body of ``content_type``, and the 413 message that names it."""
        if content_type.split(";", 1)[0].strip().lower() == MULTIPART:
            return self.max_bytes, (f"the request body is larger than the {self.max_bytes} bytes accepted; "
                                    "send a smaller file")
        return self.max_json_bytes, (f"the request body is larger than the {self.max_json_bytes} bytes accepted for "
                                     "JSON; send files as multipart/form-data or by https URL")

    @staticmethod
    def form_refusal() -> str:
        """Werkzeug's multipart parser refuses a field or a part count without saying which; this says both."""
        return (f"the multipart form has a field (other than the file) over {MAX_FORM_FIELD_BYTES} bytes, or more "
                f"than {MAX_FORM_PARTS} parts; send fewer, shorter fields")


class ReadingSlots:
    """The body-reading slots of one API process: ``total`` in all, at most ``per_key`` for one API key."""

    def __init__(self, total: int, per_key: int) -> None:
        self._free = threading.BoundedSemaphore(total)
        self._per_key = per_key
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str | None) -> None:
        """Take a slot for ``key`` (None: a caller without one) or raise TooManyBodies saying which cap."""
        if key is not None:
            with self._lock:
                if self._held.get(key, 0) >= self._per_key:
                    raise TooManyBodies(f"this API key already has {self._per_key} uploads arriving at this server; "
                                        "wait for one to finish, then retry")
                self._held[key] = self._held.get(key, 0) + 1
        if not self._free.acquire(timeout=SLOT_WAIT_S):
            self._forget(key)
            raise TooManyBodies("too many uploads are arriving at once; retry in a few seconds")

    def give(self, key: str | None) -> None:
        self._free.release()
        self._forget(key)

    def _forget(self, key: str | None) -> None:
        if key is None:
            return
        with self._lock:
            left = self._held.get(key, 0) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)


_lingering = threading.BoundedSemaphore(MAX_LINGERING)


def _linger(conn: socket.socket, max_bytes: int) -> None:
    """Half-close after the answer, then discard what the client still sends (bounded), then close."""
    try:
        conn.shutdown(socket.SHUT_WR)
        end = time.monotonic() + LINGER_S
        drained = 0
        while drained <= max_bytes:
            left = end - time.monotonic()
            if left <= 0:
                break
            conn.settimeout(min(left, LINGER_READ_S))
            data = conn.recv(1 << 16)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    finally:
        conn.close()
        _lingering.release()


def _caller_key() -> str | None:
    """The API key of the request being served, once its token was verified (bodies are read after that)."""
    claims = getattr(g, "claims", None) if has_request_context() else None
    return getattr(claims, "kid", None)


class GuardedBody(io.RawIOBase):
    """``wsgi.input`` as the app sees it: counted, capped and under a deadline."""

    def __init__(self, raw: Any, limits: BodyLimits, environ: WSGIEnvironment, started: float,
                 slots: ReadingSlots | None = None, force_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._slots = slots
        self._holder: tuple[str | None] | None = None
        """While a reading slot is held: (the API key it counts against,)."""
        self._force_close = force_close
        self._linger_bytes = max(2 * limits.max_bytes, LINGER_MIN_BYTES)
        self._armed = False
        self._limit, self._too_large = limits.refusal(environ.get("CONTENT_TYPE", ""))
        self._declared = _content_length(environ)
        self._timeout_s = limits.timeout_s
        self._deadline = started + limits.timeout_s
        self._sock: socket.socket | None = environ.get("gunicorn.socket")
        self._count = 0
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._settled = False
        self._expired = False
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._armed and not self._settled:
            self._armed = True
            self._arm()
        elif self._timer is None and time.monotonic() > self._deadline:  # no socket to interrupt: check per read
            raise self._too_slow()
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._limit - self._count + 1)  # one byte past the limit tells "too large"
        if want <= 0 or self._ended:
            return 0
        try:
            data = self._raw.read(want)
        except Exception:
            if self._expired:
                raise self._too_slow() from None
            raise BadRequest("the request body ended early or is malformed; send it again") from None
        if not data:
            if self._expired:
                raise self._too_slow()
            self._end()
            if self._declared is not None and self._count < self._declared:
                raise BodyCutShort(f"the request body ended after {self._count} of the {self._declared} bytes its "
                                   "Content-Length announced; send it again")
            return 0
        self._count += len(data)
        if self._count > self._limit:
            raise BodyTooLarge(self._too_large)
        view[: len(data)] = data
        if self._declared is not None and self._count >= self._declared:
            self._end()
        return len(data)

    def release(self) -> None:
        """After the response is out: stop the timer, and end the connection if the body was not read to its end
        (lingering, so the client still reads the answer, when gunicorn's socket can be taken over)."""
        self._settle()
        if self._ended or self._sock is None:
            return
        if self._force_close is not None and type(self._sock) is socket.socket and _lingering.acquire(blocking=False):
            self._force_close()  # gunicorn must not keep the connection alive and drain it in one of its threads
            conn = socket.socket(fileno=self._sock.detach())  # gunicorn's close of its socket is now a no-op
            threading.Thread(target=_linger, args=(conn, self._linger_bytes), name="bridge-linger",
                             daemon=True).start()
            return
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _arm(self) -> None:
        """Before reading: refuse a declared length over the limit, or a deadline already passed; take a reading
        slot; start the timer."""
        if self._declared is not None and self._declared > self._limit:
            raise BodyTooLarge(self._too_large)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._too_slow()
        if self._slots is not None:
            key = _caller_key()
            try:
                self._slots.take(key)
            except TooManyBodies:
                self._settled = True  # nothing read, nothing to time
                raise
            self._holder = (key,)
        if self._sock is not None:
            self._timer = threading.Timer(remaining, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._settled:
                return
            self._expired = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)  # type: ignore[union-attr]  # wakes the blocked recv

    def settle(self) -> None:
        """Nothing more will be read: give back the reading slot and stop the deadline timer."""
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._settled = True
            holder, self._holder = self._holder, None
        if holder is not None and self._slots is not None:
            self._slots.give(holder[0])
        if self._timer is not None:
            self._timer.cancel()

    def _end(self) -> None:
        self._ended = True
        self._settle()

    def _too_slow(self) -> BodyTooSlow:
        return BodyTooSlow(f"the request body did not arrive within {self._timeout_s:g} s; send it faster")


def _content_length(environ: WSGIEnvironment) -> int | None:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or ""))
    except ValueError:
        return None


def _has_body(environ: WSGIEnvironment) -> bool:
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return chunked or bool(_content_length(environ))


class BodyGuard:
    """WSGI middleware putting every request body behind a ``GuardedBody``."""

    def __init__(self, app: WSGIApplication, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits
        self.slots = ReadingSlots(limits.readers, max(1, limits.readers // 2)) if limits.readers else None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not _has_body(environ):
            return self.app(environ, start_response)
        body = GuardedBody(environ["wsgi.input"], self.limits, environ, time.monotonic(), self.slots,
                           _gunicorn_force_close(start_response))
        environ["wsgi.input"] = body
        try:
            result = self.app(environ, start_response)
        except BaseException:
            body.release()
            raise
        body.settle()  # the view is done with the body: free its reading slot and timer now, not when sent
        return ClosingIterator(result, body.release)


def _gunicorn_force_close(start_response: StartResponse) -> Callable[[], None] | None:
    """gunicorn's ``start_response`` is a method of its response object, whose ``force_close`` ends the
    connection after the answer instead of keeping it alive; None under other servers."""
    return getattr(getattr(start_response, "__self__", None), "force_close", None)


def problem_handlers(limits: BodyLimits) -> dict[type[Exception], Callable[[Exception], Response]]:
    """Error handlers turning the refusals above (and Werkzeug's own form limits) into problem+json."""

    def too_large(error: Exception) -> Response:
        detail = error.description if isinstance(error, BodyTooLarge) else limits.form_refusal()
        return problems.problem(413, None, detail, code="body_too_large")

    def too_slow(error: Exception) -> Response:
        detail = error.description if isinstance(error, BodyTooSlow) else None
        return problems.problem(408, None, detail, code="body_timeout")

    def busy(error: Exception) -> Response:
        return problems.problem(503, None, error.description if isinstance(error, TooManyBodies) else None,
                                problems.UNAVAILABLE, headers={"Retry-After": str(BUSY_RETRY_S)}, code="busy")

    def cut_short(error: Exception) -> Response:
        return problems.problem(400, None, error.description if isinstance(error, BodyCutShort) else None,
                                code="body_cut_short")

    return {RequestEntityTooLarge: too_large, RequestTimeout: too_slow, TooManyBodies: busy, BodyCutShort: cut_short}
