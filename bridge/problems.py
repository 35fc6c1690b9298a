"""RFC 9457 problem details: every error the bridge returns, and what the OpenAPI spec says about it.

APIFlask answers errors as ``application/json`` and documents them that way; schemathesis then flags
the real ``application/problem+json`` responses as undocumented (ST105). ``register`` fixes both ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

from apiflask import APIFlask, HTTPError
from flask import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "tag:talking-head-dify,2026:problems/"
"""Problem type URIs are tag URIs (RFC 4151): stable identifiers, not links."""
INVALID_TOKEN = TYPE_BASE + "invalid-token"
INSUFFICIENT_SCOPE = TYPE_BASE + "insufficient-scope"
VALIDATION = TYPE_BASE + "validation"
NOT_READY = TYPE_BASE + "not-ready"
UNAVAILABLE = TYPE_BASE + "dependency-unavailable"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string", "description": "URI identifying the problem type; about:blank for plain HTTP."},
        "title": {"type": "string", "description": "Short summary of the problem type."},
        "status": {"type": "integer", "description": "The HTTP status code."},
        "detail": {"type": "string", "description": "What went wrong with this request, for a human."},
        "code": {"type": "string", "description": "Machine-readable reason, e.g. expired, replayed."},
        "field": {"type": "string", "description": "The request field at fault, when there is one."},
        "errors": {
            "type": "array",
            "description": "Every validation failure (422 only).",
            "items": {
                "type": "object",
                "properties": {"in": {"type": "string"}, "field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "checks": {"type": "object", "description": "Per-dependency results (/readyz only)."},
    },
    "required": ["type", "title", "status"],
    "additionalProperties": True,
}

_DEFAULT_DETAILS = {
    400: "The request body could not be parsed: send valid JSON (or multipart/form-data where documented).",
    404: "There is no resource at this URL.",
    405: "This URL does not support that HTTP method.",
    413: "The request body is larger than the bridge accepts.",
    500: "The bridge failed unexpectedly; the error has been logged.",
}


def problem(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    field: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build a problem+json response; ``title`` defaults to the HTTP reason phrase.

    The body ends with a newline, as a text answer should: printed by curl, it leaves the shell's prompt on a
    line of its own.
    """
    body: dict[str, Any] = {"type": type_, "title": title or _phrase(status), "status": status}
    if detail:
        body["detail"] = detail
    if field:
        body["field"] = field
    body.update(extra)
    response = Response(json.dumps(body) + "\n", status=status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def invalid(field: str, message: str, code: str, where: str = "body") -> Response:
    """A 422 naming the field (``detail`` starts with it) with a machine-readable ``code``."""
    return problem(422, None, f"{field}: {message}", VALIDATION, field, code=code,
                   errors=[{"in": where, "field": field, "message": message}])


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _flatten(messages: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """marshmallow's nested ``{field: [msg] | {subfield: ...}}`` as (dotted field, message) pairs."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            yield from _flatten(value, f"{path}.{key}" if path else str(key))
    elif isinstance(messages, list | tuple):
        for message in messages:
            yield from _flatten(message, path)
    else:
        yield path, str(messages)


def http_error_to_problem(error: HTTPError) -> Response:
    """APIFlask's error processor: 404, 405, 413, 422, 500… all leave as problem+json."""
    status = error.status_code
    headers = {k: v for k, v in dict(error.headers or {}).items() if k.lower() != "content-type"}
    if status == 422 and isinstance(error.detail, Mapping) and error.detail:
        errors = [
            {"in": location, "field": field, "message": message}
            for location, fields in error.detail.items()
            for field, message in _flatten(fields)
        ]
        first = errors[0] if errors else {}
        detail = f"{first['field']}: {first['message']}" if first else "The request is invalid."
        return problem(status, None, detail, VALIDATION, first.get("field"), headers=headers, errors=errors)
    phrase = _phrase(status)
    detail = error.message if error.message and error.message != phrase else _DEFAULT_DETAILS.get(status)
    return problem(status, phrase, detail, headers=headers, **dict(error.extra_data or {}))


_ERROR_SCHEMA_NAMES = ("HTTPError", "ValidationError")
"""Component names APIFlask gives the error schemas; both become one ``Problem`` component."""


def _rename_refs(node: Any, old: set[str], new: str) -> None:
    if isinstance(node, dict):
        if node.get("$ref") in old:
            node["$ref"] = new
        for value in node.values():
            _rename_refs(value, old, new)
    elif isinstance(node, list):
        for value in node:
            _rename_refs(value, old, new)


def document_problem_responses(spec: dict[str, Any]) -> dict[str, Any]:
    """Spec processor: error responses are declared as application/problem+json with one Problem schema."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    removed = [schemas.pop(name, None) for name in _ERROR_SCHEMA_NAMES]
    if any(schema is not None for schema in removed):
        schemas["Problem"] = PROBLEM_SCHEMA
        _rename_refs(spec["paths"], {f"#/components/schemas/{name}" for name in _ERROR_SCHEMA_NAMES},
                     "#/components/schemas/Problem")
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            if "requestBody" in operation:
                operation["responses"].setdefault("400", {
                    "description": "The body could not be parsed",
                    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}})
            for status, response in operation.get("responses", {}).items():
                content = response.get("content") if str(status)[:1] in {"4", "5"} else None
                if content and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return spec


def register(app: APIFlask) -> None:
    """Route every error through ``http_error_to_problem`` and document the problem schema."""
    app.config["HTTP_ERROR_SCHEMA"] = PROBLEM_SCHEMA
    app.config["VALIDATION_ERROR_SCHEMA"] = PROBLEM_SCHEMA
    app.error_processor(http_error_to_problem)
    app.spec_processor(document_problem_responses)
