"""Text and language checks shared by every TTS backend and by the bridge's intake.

The same functions run at submit (so a client hears about bad input at once) and in the engine
(so a job queued by an older bridge, or a direct engine caller, gets the same clear error).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .errors import InvalidText, UnknownVoice
from .language_id import identify, language_name
from .pictographs import strip_pictographs

LANG_ALIASES = {"zh": "zh", "cmn": "zh", "zh-cn": "zh", "zh-hans": "zh", "mandarin": "zh",
                "en": "en", "en-us": "en", "english": "en"}
MAX_TAG_LENGTH = 35
"""RFC 5646 section 4.4.1: the length every implementation must handle."""
# RFC 5646 langtag: language (with up to three extlangs), script, region, variants, extensions, private use.
_LANGUAGE_TAG = re.compile(
    r"[a-z]{2,8}(?:-[a-z]{3}){0,3}(?:-[a-z]{4})?(?:-(?:[a-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*(?:-[a-wyz0-9](?:-[a-z0-9]{2,8})+)*(?:-x(?:-[a-z0-9]{1,8})+)?",
    re.IGNORECASE | re.ASCII,
)
TAG_HINT = "a BCP 47 language tag such as en, en-US, cmn or zh-Hans-CN, or auto"


def speakable_text(text: str) -> str:
    """``text`` normalised to NFC, without emoji, with whitespace and controls collapsed to single spaces.

    Emoji go (``pictographs``): subtitle fonts draw them as empty boxes and voices read their names.
    Refuses text a voice cannot say: empty, or only emoji, punctuation, symbols and controls (no
    letter or digit at all), and text that is not valid Unicode (a lone surrogate cannot be encoded
    for any synthesiser).
    """
    if not isinstance(text, str):
        raise InvalidText("text must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidText(f"text is not valid Unicode (a lone surrogate at character {exc.start + 1}); "
                          "send it as UTF-8") from exc
    normal = unicodedata.normalize("NFC", text)
    cleaned = " ".join("".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in normal).split())
    if not cleaned:
        raise InvalidText("text is empty: give at least one word to speak")
    cleaned = " ".join(strip_pictographs(cleaned).split())
    if not any(ch.isalnum() for ch in cleaned):
        raise InvalidText("text is empty of words: it holds only emoji, punctuation or symbols, which no voice "
                          "can say; give at least one word to speak")
    return cleaned


def clean_text(text: str, max_chars: int) -> str:
    """``speakable_text`` plus the length limit, with a clear message for each refusal."""
    cleaned = speakable_text(text)
    if len(cleaned) > max_chars:
        raise InvalidText(
            f"text is {len(cleaned)} characters long; the limit is {max_chars} "
            "(shorten it or raise ENGINE_MAX_TEXT_CHARS)"
        )
    return cleaned


def language_tag(lang: str | None) -> str:
    """``auto`` or the lower-cased tag; anything else (``../``, ``en_US``, NUL…) is refused.

    A language tag later picks voice data files, so only the strict RFC 5646 shape passes.
    """
    if lang is None or (isinstance(lang, str) and lang.lower() in ("", "auto")):
        return "auto"
    if not isinstance(lang, str) or len(lang) > MAX_TAG_LENGTH or not _LANGUAGE_TAG.fullmatch(lang):
        shown = repr(lang[:40]) if isinstance(lang, str) else type(lang).__name__
        raise UnknownVoice(f"lang {shown} is not a language tag: use {TAG_HINT}", field="lang")
    return lang.lower()


@dataclass(frozen=True)
class LanguageChoice:
    """The tag a text is spoken in, and what the user should be told about how it was chosen."""

    tag: str
    notes: tuple[str, ...] = ()
    text_lang: str | None = None
    """The text's language: detected where that was sure, else the given ``lang``; None for an unsure
    ``auto`` (so no voice is blamed for a language the text may not be in)."""


def choose_language(text: str, lang: str | None) -> LanguageChoice:
    """Resolve ``auto`` by detection, aliases to their tag, and say what was picked or doubted.

    ``auto`` reports the language it picked; text too short or mixed to tell is read as English and
    says so. A given ``lang`` is kept, with a note when the text is plainly in another language.
    """
    tag = language_tag(lang)
    guess = identify(text)
    if tag != "auto":
        tag = LANG_ALIASES.get(tag, tag)
        notes = ()
        if guess.sure and not _same_language(guess.tag, tag):
            notes = (f"the text looks like {guess.name} ({guess.tag}), but lang is {tag}: it is read as "
                     f"{language_name(tag)}; set lang to {guess.tag} or auto to have it read as {guess.name}",)
        return LanguageChoice(tag, notes, guess.tag if guess.sure else tag)
    if guess.sure:
        return LanguageChoice(guess.tag, (f"auto-detected language: {guess.name} ({guess.tag})",), guess.tag)
    maybe = "" if guess.tag == "en" or guess.confidence < 0.3 else \
        f" (best guess {guess.name}, {guess.confidence:.0%} likely)"
    return LanguageChoice("en", (f"lang auto could not tell the language of this text, it is too short or mixed"
                                 f"{maybe}; it is read as English (en): set lang to choose",))


def _same_language(a: str, b: str) -> bool:
    """Whether two tags name one language: the same first subtag, Mandarin's two names counted as one."""
    fold = {"cmn": "zh", "no": "nb"}
    first_a, first_b = a.split("-")[0], b.split("-")[0]
    return fold.get(first_a, first_a) == fold.get(first_b, first_b)


def detect_lang(text: str, lang: str | None) -> str:
    """The tag ``text`` is spoken in: ``lang`` (aliases resolved) or, for ``auto``, the detected language."""
    tag = language_tag(lang)
    return LANG_ALIASES.get(tag, tag) if tag != "auto" else choose_language(text, tag).tag
