"""Names people give things (avatar names, upload file names), made safe to store and to show.

A name is displayed in Dify's dropdowns, in lists and in logs. Control characters (NUL among them, which
PostgreSQL refuses) and line breaks do not belong in a one-line label, and text-direction controls let a name
display as something else: ``"\u202egnp.exe"`` shows as "exe.png". Both kinds are removed, runs of spaces are
folded, and the result is cut to a length every list can show.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 100
_DIRECTION_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)] + ["\u200e", "\u200f", "\u061c"]
)
"""Embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the invisible direction marks."""


def display_name(raw: str | None, limit: int = MAX_NAME_CHARS) -> str | None:
    """``raw`` without control and direction characters, spaces folded, at most ``limit`` characters; None when
    nothing is left."""
    if raw is None:
        return None
    kept = "".join(" " if ch.isspace() else ch for ch in raw
                   if ch not in _DIRECTION_CONTROLS and (ch.isspace() or unicodedata.category(ch) not in {"Cc", "Cs"}))
    name = " ".join(kept.split())[:limit].rstrip()
    return name or None
