"""JSON bodies that Python's json module refuses with a plain ValueError instead of a JSONDecodeError.

Python caps integer literals at 4,300 digits (the quadratic int-parsing fix, CVE-2020-10735) and raises a
ValueError past it. webargs catches only JSONDecodeError, so ``{"x": 999…9}`` with 4,301 digits was a 500 with
a traceback, from any valid token. Turned into a JSONDecodeError, it is the same 400 as any unreadable body.
"""

from __future__ import annotations

import json
from typing import Any

from webargs.flaskparser import FlaskParser

_HARDENED = "_bridge_values_checked"


def refuse_unreadable_values(parser: FlaskParser) -> None:
    """Make ``parser`` (APIFlask's module-wide one) answer such bodies with 400; safe to call once per app."""
    if getattr(parser, _HARDENED, False):
        return
    load = parser._raw_load_json

    def load_or_refuse(req: Any) -> Any:
        try:
            return load(req)
        except json.JSONDecodeError:
            raise
        except ValueError as exc:
            raise json.JSONDecodeError(f"a value in the body cannot be read ({exc})", "<body>", 0) from None

    parser._raw_load_json = load_or_refuse  # type: ignore[method-assign]
    setattr(parser, _HARDENED, True)
