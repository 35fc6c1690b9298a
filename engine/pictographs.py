"""Emoji and other pictographs taken out of text before it is spoken or captioned.

The subtitle fonts have no emoji glyphs, so libass draws each one as an empty box, and eSpeak reads
some of them out by name ("grinning face"). Neither is what the writer meant, so they go from both.
What counts is a pictograph with everything that only decorates it: skin-tone modifiers, variation
selectors, the zero-width joiner inside a ZWJ sequence (👩‍💻), keycap marks, regional-indicator flags
(🇫🇷) and tag-sequence flags (🏴 + tags). Letters of every script, accents, CJK punctuation, ©, ®, ™
and arrows stay: fonts draw them and voices read them.
"""

from __future__ import annotations

import re

_PICTOGRAPH = (
    "\u231a\u231b\u2328\u23cf\u23e9-\u23f3\u23f8-\u23fa"  # watch, hourglass, keyboard, media buttons
    "\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe"  # Ⓜ and the small squares and play buttons emoji use
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats: ☀ ☺ ♥ ✂ ✈ ✨ ❤ …
    "\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55"  # emoji arrows, squares, ⭐ ⭕
    "\U0001f000-\U0001faff"  # mahjong, cards, enclosed letters, flags' letters, all emoji blocks
)
_DECORATION = (
    "\ufe0e\ufe0f"  # text and emoji presentation selectors
    "\u20e3"  # combining keycap
    "\U000e0020-\U000e007f"  # tag characters of subdivision flags
)
_ZWJ = "\u200d"
# A pictograph, then any decorations and further ZWJ-joined pictographs: one emoji as the reader sees it.
_EMOJI = re.compile(
    f"\\s*(?:[{_PICTOGRAPH}][{_DECORATION}]*(?:{_ZWJ}[{_PICTOGRAPH}][{_DECORATION}]*)*{_ZWJ}?"
    f"|[{_DECORATION}]+)"
)


def strip_pictographs(text: str) -> str:
    """``text`` without emoji; a ZWJ between two letters (as Indic scripts use it) is left alone.

    An emoji goes with the spaces before it, and leaves one space only where a word follows
    (``Hi😀there`` → ``Hi there``, ``Hi 👋🏻!`` → ``Hi!``), so no stray space is left before punctuation.
    """

    def gap(match: re.Match[str]) -> str:
        after = text[match.end()] if match.end() < len(text) else " "
        return " " if match.start() and after.isalnum() else ""

    return _EMOJI.sub(gap, text)
