"""WebVTT and SRT captions from word timings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .tts.base import Word

MAX_CHARS = 42
MAX_SECONDS = 4.0
_SENTENCE_END = re.compile(r"[.!?。！？；;]$")
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def _join(words: list[str]) -> str:
    out = ""
    for w in words:
        glue = "" if not out or _CJK.search(out[-1]) or _CJK.search(w[0]) else " "
        out += glue + w
    return out


def cues(words: list[Word]) -> list[Cue]:
    """Group words into readable cues: at most ~42 characters or 4 s, breaking after sentences."""
    result: list[Cue] = []
    current: list[Word] = []
    for word in words:
        if current:
            text = _join([w.text for w in current] + [word.text])
            if len(text) > MAX_CHARS or word.end - current[0].start > MAX_SECONDS:
                result.append(Cue(current[0].start, current[-1].end, _join([w.text for w in current])))
                current = []
        current.append(word)
        if _SENTENCE_END.search(word.text):
            result.append(Cue(current[0].start, current[-1].end, _join([w.text for w in current])))
            current = []
    if current:
        result.append(Cue(current[0].start, current[-1].end, _join([w.text for w in current])))
    return result


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_vtt(items: list[Cue]) -> str:
    body = "".join(f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n{c.text}\n\n" for c in items)
    return "WEBVTT\n\n" + body


def to_srt(items: list[Cue]) -> str:
    return "".join(
        f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n{c.text}\n\n" for i, c in enumerate(items, 1))


def write(words: list[Word], stem: Path) -> tuple[Path, Path]:
    """``stem``.vtt and ``stem``.srt beside the video."""
    items = cues(words)
    vtt, srt = stem.with_suffix(".vtt"), stem.with_suffix(".srt")
    vtt.write_text(to_vtt(items), encoding="utf-8")
    srt.write_text(to_srt(items), encoding="utf-8")
    return vtt, srt
