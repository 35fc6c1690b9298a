"""Text checks shared by every TTS backend: emptiness, length, and a language guess."""

from __future__ import annotations

import re
import unicodedata

from .errors import InvalidText

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LANG_ALIASES = {"zh": "zh", "cmn": "zh", "zh-cn": "zh", "zh_cn": "zh", "zh-hans": "zh", "mandarin": "zh",
                "en": "en", "en-us": "en", "en_us": "en", "english": "en"}


def clean_text(text: str, max_chars: int) -> str:
    """Normalise to NFC, collapse whitespace, and refuse empty or over-long input with a clear message."""
    if not isinstance(text, str):
        raise InvalidText("text must be a string")
    cleaned = " ".join(unicodedata.normalize("NFC", text).split())
    if not cleaned or not any(ch.isalnum() for ch in cleaned):
        raise InvalidText("text is empty: give at least one word to speak")
    if len(cleaned) > max_chars:
        raise InvalidText(
            f"text is {len(cleaned)} characters long; the limit is {max_chars} "
            "(shorten it or raise ENGINE_MAX_TEXT_CHARS)"
        )
    return cleaned


def detect_lang(text: str, lang: str | None) -> str:
    """Resolve ``auto``/aliases to a language tag; any CJK ideograph means Mandarin."""
    if lang and lang.lower() not in ("auto", ""):
        return LANG_ALIASES.get(lang.lower(), lang.lower())
    return "zh" if _CJK.search(text) else "en"
