"""WebVTT and SRT captions from word timings, broken where a reader expects a pause.

A cue ends after a sentence, or before it grows past ``MAX_WIDTH`` or ``MAX_SECONDS``; when it must end
early it ends at the last clause boundary (after ``, ; : —`` or before a conjunction) rather than
mid-clause. A cue wider than ``LINE_WIDTH`` is shown on two lines, split at the clause boundary nearest
its middle, so libass never wraps a burned-in line wherever the picture edge falls. Widths count a CJK
character as two, as it is drawn, and a word (an address is one word, see ``links``) is never split.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .tts.base import Word

MAX_WIDTH = 42
LINE_WIDTH = 28
MAX_SECONDS = 4.0
_SENTENCE_END = re.compile(r"[.!?。！？；;]$")
_CLAUSE_END = re.compile(r"[,;:—–，、；：]$")
_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")
# Words a clause starts with: a line may break before them.
_CONJUNCTIONS = frozenset({
    "and", "but", "or", "so", "because", "which", "while", "when", "if", "although", "though", "unless",
    "et", "mais", "ou", "donc", "car", "parce", "quand", "lorsque", "puis",
    "und", "aber", "oder", "denn", "weil", "dass", "wenn", "als",
    "y", "pero", "porque", "cuando", "aunque", "e", "ma", "perché", "quando", "mas", "porém",
    "en", "maar", "omdat", "和", "但是", "因为", "所以", "而且", "或者",
})
_STRIP = ".,;:!?\"'()[]«»“”‘’—–"


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def width(text: str) -> int:
    """How wide ``text`` is drawn, in half-width character cells."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _join(words: list[str]) -> str:
    out = ""
    for w in words:
        glue = "" if not out or _CJK.search(out[-1]) or _CJK.search(w[0]) else " "
        out += glue + w
    return out


def _boundary(words: list[Word], i: int) -> int:
    """How good a break before ``words[i]`` is: 2 after clause punctuation, 1 before a conjunction."""
    if _CLAUSE_END.search(words[i - 1].text):
        return 2
    return 1 if words[i].text.lower().strip(_STRIP) in _CONJUNCTIONS else 0


def _split_point(words: list[Word]) -> int:
    """Where a too-long cue should end: after the last clause boundary that leaves it a third full."""
    best = (0, len(words))
    for i in range(1, len(words)):
        score = _boundary(words, i)
        if score and width(_join([w.text for w in words[:i]])) >= MAX_WIDTH // 3 and (score, i) > best:
            best = (score, i)
    return best[1]


def _lines(words: list[Word]) -> str:
    """The cue's text, on two lines split at the best boundary near the middle when it is too wide."""
    texts = [w.text for w in words]
    whole = _join(texts)
    if width(whole) <= LINE_WIDTH or len(words) < 2:
        return whole
    total = width(whole)

    def cost(i: int) -> float:
        return abs(2 * width(_join(texts[:i])) - total) - 12 * _boundary(words, i)

    i = min(range(1, len(words)), key=cost)
    return _join(texts[:i]) + "\n" + _join(texts[i:])


def _cue(words: list[Word]) -> Cue:
    return Cue(words[0].start, words[-1].end, _lines(words))


def cues(words: list[Word]) -> list[Cue]:
    """Group words into readable cues: at most ``MAX_WIDTH`` cells or ``MAX_SECONDS``, one sentence at most."""
    result: list[Cue] = []
    current: list[Word] = []
    for word in words:
        while current and (width(_join([w.text for w in [*current, word]])) > MAX_WIDTH
                           or word.end - current[0].start > MAX_SECONDS):
            cut = _split_point(current)
            result.append(_cue(current[:cut]))
            current = current[cut:]
        current.append(word)
        if _SENTENCE_END.search(word.text):
            result.append(_cue(current))
            current = []
    if current:
        result.append(_cue(current))
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
