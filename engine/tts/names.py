"""Voice names checked before they reach a synthesiser.

libespeak-ng opens a voice name as a file under its data directory (``../`` reaches ``/etc``; ``../``
alone crashes it), and TTS servers such as Kokoro-FastAPI load ``voices/<name>.pt``. So a name that
comes from a request must never carry a path: no ``/``, ``\\``, ``..``, NUL or other control character,
and only the characters real voice ids use.
"""

from __future__ import annotations

import re

from ..errors import UnknownVoice

MAX_NAME_LENGTH = 128
_ESPEAK_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*", re.IGNORECASE | re.ASCII)
# Server voice ids: "alloy", "af_bella", Kokoro mixes such as "af_bella(2)+af_sky(1)", "en_US-joe-medium".
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+()-]*", re.ASCII)


def _refuse_paths(name: object, field: str) -> str:
    if not isinstance(name, str) or not name:
        raise UnknownVoice(f"{field} must be a non-empty string", field=field)
    if "/" in name or "\\" in name or ".." in name or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UnknownVoice(f"{field} {name[:40]!r} is not a voice name: it may not contain '/', '\\', '..' "
                           "or control characters", field=field)
    if len(name) > MAX_NAME_LENGTH:
        raise UnknownVoice(f"{field} is {len(name)} characters long; voice names have at most {MAX_NAME_LENGTH}",
                           field=field)
    return name


def espeak_name(name: object, field: str = "voice") -> str:
    """``name`` if it has the shape of an eSpeak voice or language name (``en-us``, ``cmn-latn-pinyin``)."""
    checked = _refuse_paths(name, field)
    if not _ESPEAK_NAME.fullmatch(checked):
        raise UnknownVoice(f"{field} {checked[:40]!r} is not an eSpeak name: letters and digits in parts "
                           "joined by '-'", field=field)
    return checked


def server_voice(name: object, field: str = "voice") -> str:
    """``name`` if it is safe to send to a TTS server that may look it up as a file."""
    checked = _refuse_paths(name, field)
    if not _SERVER_NAME.fullmatch(checked):
        raise UnknownVoice(f"{field} {checked[:40]!r} is not a voice id: use letters, digits and _ . + ( ) -",
                           field=field)
    return checked


def is_server_voice(name: object) -> bool:
    """Whether ``server_voice`` accepts ``name`` (used to leave unsafe ids out of voice lists)."""
    try:
        server_voice(name)
    except UnknownVoice:
        return False
    return True
