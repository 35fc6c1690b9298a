"""JSON logs with per-request and per-job context, and secrets scrubbed before any handler writes them.

One line per record on stdout: ``time, level, logger, message``, then whichever of ``CONTEXT_FIELDS`` are
bound (``log_context`` / ``bind``), then the record's ``extra``. Tokens, API key secrets, link signatures and
presigned URLs are redacted by a filter on every handler (shared/notes/bridge-jobs-security.md §5), so a
careless ``log.info("%s", url)`` cannot leak a credential into a log file.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS: tuple[str, ...] = ("request_id", "job_id", "sub", "stage", "duration_s", "attempt", "worker", "gpu")
REQUEST_ID_HEADER = "X-Request-ID"
ACCESS_LOGGER = "bridge.access"
QUIET_PATHS: frozenset[str] = frozenset({"/livez", "/readyz", "/metrics"})
"""Probe and scrape paths: their successful requests are logged at DEBUG so they do not drown the rest."""
REDACTED = "[REDACTED]"

_context: ContextVar[Mapping[str, Any]] = ContextVar("bridge_log_context", default=MappingProxyType({}))
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_MAX_DEPTH = 6


# --- context --------------------------------------------------------------------------------------------------


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add fields to the current context (``None`` unbinds one); ``reset(token)`` restores the previous one."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"unknown log context field(s) {sorted(unknown)}; known: {', '.join(CONTEXT_FIELDS)}")
    merged = {**_context.get(), **fields}
    return _context.set({key: value for key, value in merged.items() if value is not None})


def reset(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields for the duration of a block: ``with log_context(job_id=job.id, attempt=2): ...``."""
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def current_context() -> dict[str, Any]:
    """The fields bound right now, e.g. to pass ``request_id`` on to a Celery task's headers."""
    return dict(_context.get())


def get_request_id() -> str | None:
    value = _context.get().get("request_id")
    return None if value is None else str(value)


# --- redaction ------------------------------------------------------------------------------------------------

_SENSITIVE_PARAMS = (
    r"sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
    r"|awsaccesskeyid|key-pair-id|policy|access_token|id_token|refresh_token|token"
)
_URL_WITH_QUERY = re.compile(r"(?P<base>\b[a-z][a-z0-9+.-]*://[^\s?#\"'<>]+)\?(?P<query>[^\s#\"'<>]*)", re.I)
_PRESIGNED_QUERY = re.compile(rf"(?:^|[&;])(?:{_SENSITIVE_PARAMS}|x-amz-[a-z-]+|x-goog-[a-z-]+)(?:=|%3D)", re.I)
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"(?<![A-Za-z0-9_-])(?P<name>{_SENSITIVE_PARAMS})(?P<eq>=|%3D)(?:(?!%26)[^&\s\"'#<>])+", re.I),
     rf"\g<name>\g<eq>{REDACTED}"),
    (re.compile(r"\b(?P<scheme>bearer)\s+(?=[A-Za-z0-9._~+/-]{16,})[A-Za-z0-9._~+/=-]+", re.I),
     rf"\g<scheme> {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (re.compile(r"(?<![A-Za-z0-9])thk_(?P<kid>[A-Za-z0-9]+)_[A-Za-z0-9_-]+"), rf"thk_\g<kid>_{REDACTED}"),
    (re.compile(r"\b(?P<name>(?:proxy-)?authorization|x-api-key|api[-_]?key)(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
                r"(?:[A-Za-z][A-Za-z0-9-]*\s+)?[^\s\"',}<>]{8,}", re.I),  # a placeholder like <token> stays
     rf"\g<name>\g<sep>{REDACTED}"),
    (re.compile(r"\b(?P<name>set-cookie|cookie)(?P<sep>[\"']?\s*:\s*[\"']?)[^\"'\r\n}]+", re.I),
     rf"\g<name>\g<sep>{REDACTED}"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
)
_SENSITIVE_KEYS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "token", "access_token", "id_token",
    "refresh_token", "secret", "client_secret", "password", "api_key", "apikey", "x-api-key", "sig", "signature",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "credentials", "link_secret",
})
_SENSITIVE_SUFFIXES = ("_token", "_secret", "_password", "_signature")


def _strip_presigned_query(match: re.Match[str]) -> str:
    if _PRESIGNED_QUERY.search(match["query"]):
        return f"{match['base']}?{REDACTED}"
    return match[0]


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[REDACTED]``; an API key keeps its kid. Idempotent."""
    text = _URL_WITH_QUERY.sub(_strip_presigned_query, text)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def _sensitive_key(key: object) -> bool:
    name = str(key).lower()
    return name in _SENSITIVE_KEYS or name.endswith(_SENSITIVE_SUFFIXES)


def redact_value(value: Any, depth: int = 0) -> Any:
    """Strings redacted, containers copied with their contents redacted, other objects by their ``str``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {key: REDACTED if _sensitive_key(key) else redact_value(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item, depth + 1) for item in value]
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    """Scrubs message, args, ``extra`` fields, traceback and stack text in place. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        self._message(record)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS:
                record.__dict__[key] = REDACTED if _sensitive_key(key) else redact_value(value)
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned = redact(text)
            if cleaned != text:  # only then give up exc_info, so every formatter falls back to the clean text
                record.exc_text, record.exc_info = cleaned, None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True

    @staticmethod
    def _message(record: logging.LogRecord) -> None:
        if isinstance(record.msg, Mapping):
            record.msg = redact_value(record.msg)
            return
        if not record.args and isinstance(record.msg, str):
            record.msg = redact(record.msg)
            return
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: scrub the parts logging will print in its error report
            record.msg = redact_value(record.msg)
            record.args = tuple(redact_value(arg) for arg in (
                record.args if isinstance(record.args, tuple) else (record.args,)))
            return
        cleaned = redact(message)
        if cleaned != message:  # keep the template (and its grouping) unless a secret was in it
            record.msg, record.args = cleaned, None


class ContextFilter(logging.Filter):
    """Copies the bound context onto the record at emit time; an explicit ``extra`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# --- formatters and setup -------------------------------------------------------------------------------------


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BridgeJsonFormatter(JsonFormatter):
    """``time, level, logger, message``, then bound context fields, then extras."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data.update(time=_iso_time(record), level=record.levelname, logger=record.name, message=record.message)
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                log_data[key] = value
        super().add_fields(log_data, record, message_dict)

    def formatException(self, ei: Any) -> str:  # type: ignore[override]
        return redact(logging.Formatter.formatException(self, ei))

    def formatStack(self, stack_info: str) -> str:  # type: ignore[override]
        return redact(stack_info)


class BridgeTextFormatter(logging.Formatter):
    """For a terminal: ``time LEVEL logger: message [request_id=… job_id=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        bound = [f"{key}={record.__dict__[key]}" for key in CONTEXT_FIELDS if record.__dict__.get(key) is not None]
        return f"{line} [{' '.join(bound)}]" if bound else line

    def formatException(self, ei: Any) -> str:  # type: ignore[override]
        return redact(super().formatException(ei))


def add_filters(handler: logging.Handler) -> logging.Handler:
    """Context first, then redaction, so bound fields are scrubbed too. Adding twice is a no-op."""
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    return handler


class BridgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` owns, so a second call can find and replace it."""


def make_handler(stream: TextIO | None = None, *, json: bool = True) -> logging.Handler:
    """A stream handler with the bridge formatter and filters (``stream`` is captured now, not at emit)."""
    handler = BridgeHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(BridgeJsonFormatter() if json else BridgeTextFormatter())
    return add_filters(handler)


def configure_logging(level: str = "INFO", json: bool = True, *, stream: TextIO | None = None) -> logging.Handler:
    """Root logger → one handler on ``stream`` (stdout); calling it again replaces that handler, never stacks.

    Handlers installed by others (the root's and every named logger's) get the redaction filter as well.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, BridgeHandler)]:
        root.removeHandler(old)
    handler = make_handler(stream, json=json)
    root.addHandler(handler)
    root.setLevel(level.upper())
    loggers = [root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for other in logger.handlers:
            add_filters(other)
    return handler


# --- Flask ----------------------------------------------------------------------------------------------------


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    if header is not None and _REQUEST_ID_RE.fullmatch(header):
        return header
    return uuid.uuid4().hex


def init_request_logging(app: Flask, *, quiet_paths: frozenset[str] = QUIET_PATHS) -> None:
    """Bind ``request_id`` for every request, echo it as ``X-Request-ID`` and write one access line.

    The access line has the path without its query string: download links carry their signature there.
    """
    access = logging.getLogger(ACCESS_LOGGER)

    def start() -> None:
        rid = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.request_id = rid
        g._log_started = time.perf_counter()
        g._log_token = bind(request_id=rid)

    def finish(response: Response) -> Response:
        rid = getattr(g, "request_id", None) or request_id_from(None)
        response.headers[REQUEST_ID_HEADER] = rid
        duration = round(time.perf_counter() - getattr(g, "_log_started", time.perf_counter()), 6)
        claims = getattr(g, "claims", None)
        sub = getattr(g, "sub", None) or getattr(claims, "sub", None)
        status = response.status_code
        if status >= 500:
            level = logging.WARNING
        elif request.path in quiet_paths and status < 400:
            level = logging.DEBUG
        else:
            level = logging.INFO
        extra: dict[str, Any] = {"method": request.method, "path": request.path, "status": status,
                                 "duration_s": duration, "request_id": rid}
        if sub is not None:
            extra["sub"] = sub
        access.log(level, "%s %s %d %.3fs", request.method, request.path, status, duration, extra=extra)
        return response

    def teardown(_exc: BaseException | None) -> None:
        token = g.pop("_log_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # created in another context: nothing of ours to undo
                reset(token)

    app.before_request_funcs.setdefault(None, []).insert(0, start)  # first, so auth failures carry the id
    app.after_request_funcs.setdefault(None, []).insert(0, finish)  # run in reverse: this one runs last
    app.teardown_request(teardown)
