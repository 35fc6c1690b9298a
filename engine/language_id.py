"""Which language a text is written in, for ``lang: auto``.

py3langid (a naive Bayes model over byte n-grams, bundled in its wheel: nothing is downloaded) is asked
to choose only among the languages a voice here speaks, so a short text is not taken for a language no
voice could read. Writing systems that name their language outright are settled first: kana is
Japanese, hangul Korean, and Chinese characters without kana are Mandarin (the language the Chinese
voices speak; Cantonese text needs ``lang: yue``). Below ``MIN_CONFIDENCE``, or with fewer than
``MIN_LETTERS`` letters, the guess is reported as unsure and the caller falls back.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

MIN_CONFIDENCE = 0.6
MIN_LETTERS = 10

# The languages auto-detection can pick: every language of an eSpeak voice the detector knows (eSpeak
# speaks the most languages of the backends; the others speak subsets of these). Tag → English name.
NAMES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "an": "Aragonese", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bs": "Bosnian", "ca": "Catalan",
    "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fo": "Faroese", "fr": "French", "ga": "Irish", "gd": "Scottish Gaelic", "gn": "Guarani",
    "grc": "Ancient Greek", "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "is": "Icelandic",
    "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh", "kn": "Kannada", "ko": "Korean",
    "kok": "Konkani", "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin", "lb": "Luxembourgish", "lt": "Lithuanian",
    "ltg": "Latgalian", "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mr": "Marathi", "ms": "Malay",
    "mt": "Maltese", "my": "Burmese", "nb": "Norwegian", "ne": "Nepali", "nl": "Dutch", "om": "Oromo",
    "or": "Odia", "pa": "Punjabi", "pl": "Polish", "pt": "Portuguese", "qu": "Quechua", "ro": "Romanian",
    "ru": "Russian", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "sq": "Albanian", "sr": "Serbian",
    "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "th": "Thai", "tk": "Turkmen",
    "tr": "Turkish", "tt": "Tatar", "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek",
    "vi": "Vietnamese", "yue": "Cantonese", "zh": "Mandarin Chinese",
}
# Where the detector's label differs from the tag the voices use.
_VOICE_TAG = {"no": "nb", "gom": "kok", "gug": "gn"}

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


@dataclass(frozen=True)
class Guess:
    """The likeliest language; ``sure`` is False for text too short or too mixed to tell."""

    tag: str
    confidence: float
    sure: bool

    @property
    def name(self) -> str:
        return language_name(self.tag)


def language_name(tag: str) -> str:
    """``French`` for ``fr`` (or ``fr-be``); the tag itself for a language without a name here."""
    family = tag.split("-")[0]
    return NAMES.get({"cmn": "zh"}.get(family, family), tag)


class _Detector:
    """The model, loaded once (about a second) on first use and restricted to ``NAMES``."""

    _lock = threading.Lock()
    _identifier: Any = None

    @classmethod
    def rank(cls, text: str) -> list[tuple[str, float]]:
        with cls._lock:
            if cls._identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                wanted = {label for label in identifier.labels if _VOICE_TAG.get(label, label) in NAMES}
                identifier.set_languages(sorted(wanted))
                cls._identifier = identifier
            ranked = cls._identifier.rank(text)
        return [(_VOICE_TAG.get(label, label), float(p)) for label, p in ranked]


def identify(text: str) -> Guess:
    """The language of ``text`` among those a voice here speaks (see ``NAMES``)."""
    if _KANA.search(text):
        return Guess("ja", 1.0, True)
    if _HANGUL.search(text):
        return Guess("ko", 1.0, True)
    han = len(_HAN.findall(text))
    letters = sum(ch.isalpha() for ch in text)
    if han and han * 2 >= letters:
        return Guess("zh", 1.0, True)
    tag, confidence = _Detector.rank(text)[0]
    return Guess(tag, confidence, confidence >= MIN_CONFIDENCE and letters >= MIN_LETTERS)
