"""Which voice speaks a language tag: one rule for the engine's choice and the bridge's intake check.

A tag matches a voice when the tag, or a shorter prefix of it (``zh-hans-cn`` → ``zh-hans`` → ``zh``),
is the voice's id or one of its languages, or when a language of the voice is more specific than it
(a voice for ``en-us`` speaks ``en``). ``zh`` and ``cmn`` (Mandarin) stand for each other, because
eSpeak, Kokoro and HeyGem say ``cmn`` where Piper and most clients say ``zh``.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import Voice

_EQUIVALENT = {"zh": ("cmn",), "cmn": ("zh",)}


def fallbacks(tag: str) -> list[str]:
    """``tag`` and its prefixes, longest first, each followed by its equivalents."""
    parts = tag.lower().split("-")
    out: list[str] = []
    for n in range(len(parts), 0, -1):
        prefix = "-".join(parts[:n])
        for candidate in (prefix, *_EQUIVALENT.get(prefix, ())):
            if candidate not in out:
                out.append(candidate)
    return out


def _rank(voice: Voice, candidate: str) -> int | None:
    """0: the voice's id, 1: one of its languages, 2: a more specific language of it; None: no match."""
    languages = [lang.lower() for lang in voice.languages]
    if voice.id.lower() == candidate:
        return 0
    if candidate in languages:
        return 1
    if any(lang.startswith(candidate + "-") for lang in languages):
        return 2
    return None


def voice_for_language(tag: str, voices: Iterable[Voice]) -> Voice | None:
    """The best voice for ``tag`` (a lower-case language tag, not ``auto``), or None if none speaks it."""
    voices = list(voices)
    for candidate in fallbacks(tag):
        ranked = [(rank, i) for i, v in enumerate(voices) if (rank := _rank(v, candidate)) is not None]
        if ranked:
            return voices[min(ranked)[1]]
    return None


def speaks(voice: Voice, tag: str) -> bool:
    """Whether ``voice`` speaks ``tag``; a voice whose languages are unknown is taken to speak any."""
    return not voice.languages or voice_for_language(tag, [voice]) is not None
