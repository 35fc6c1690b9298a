"""Web addresses and e-mail addresses: kept whole in the subtitles, read out the way a person says them.

A synthesiser splits ``https://example.com/docs?page=2`` at every punctuation mark into words of its
own, so the captions made from its word timings read ``https :// example . com / docs?page = 2`` and the
voice reads the punctuation by its symbol names, or not at all. Instead the voice is given the address
as a person says it — ``example dot com slash docs, page equals 2`` (no ``https://``, which nobody reads
out) in the words of the text's language — and the words timed for that reading are folded back into one
caption word that shows the address exactly as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tts.base import Word

_TLDS = "com|org|net|edu|gov|io|ai|dev|app|info|biz|co|me|tv|eu|uk|us|de|fr|es|it|nl|cn|jp|br|pt|ru|in"
_TRAILING = ".,;:!?)]}'\"»”’…"
_ADDRESS = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"  # e-mail
    r"|(?:https?|ftp)://[^\s<>\"]+"  # URL with a scheme
    r"|www\.[^\s<>\"]+"  # URL without one
    rf"|\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:{_TLDS})(?:/[^\s<>\"]*)?(?![A-Za-z0-9])",  # bare domain
    re.IGNORECASE,
)
_SCHEME = re.compile(r"^(?:https?|ftp)://", re.IGNORECASE)
_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|[^A-Za-z0-9]", re.UNICODE)

# How each separator is said, per language; a language not listed reads them in English.
_SYMBOLS: dict[str, dict[str, str]] = {
    "en": {".": "dot", "/": "slash", "@": "at", "?": ",", "=": "equals", "&": "and", "-": "dash",
           "_": "underscore", "#": "hash", ":": "colon", "%": "percent", "+": "plus", "~": "tilde"},
    "fr": {".": "point", "/": "slash", "@": "arobase", "?": ",", "=": "égale", "&": "et", "-": "tiret",
           "_": "tiret bas", "#": "dièse", ":": "deux-points", "%": "pour cent", "+": "plus", "~": "tilde"},
    "de": {".": "Punkt", "/": "Schrägstrich", "@": "at", "?": ",", "=": "gleich", "&": "und", "-": "Bindestrich",
           "_": "Unterstrich", "#": "Raute", ":": "Doppelpunkt", "%": "Prozent", "+": "plus", "~": "Tilde"},
    "es": {".": "punto", "/": "barra", "@": "arroba", "?": ",", "=": "igual", "&": "y", "-": "guion",
           "_": "guion bajo", "#": "almohadilla", ":": "dos puntos", "%": "por ciento", "+": "más", "~": "tilde"},
    "it": {".": "punto", "/": "slash", "@": "chiocciola", "?": ",", "=": "uguale", "&": "e", "-": "trattino",
           "_": "trattino basso", "#": "cancelletto", ":": "due punti", "%": "percento", "+": "più", "~": "tilde"},
    "pt": {".": "ponto", "/": "barra", "@": "arroba", "?": ",", "=": "igual", "&": "e", "-": "hífen",
           "_": "sublinhado", "#": "cerquilha", ":": "dois pontos", "%": "por cento", "+": "mais", "~": "til"},
    "nl": {".": "punt", "/": "slash", "@": "apenstaartje", "?": ",", "=": "is", "&": "en", "-": "streepje",
           "_": "underscore", "#": "hekje", ":": "dubbele punt", "%": "procent", "+": "plus", "~": "tilde"},
    "zh": {".": "点", "/": "斜杠", "@": "艾特", "?": "，", "=": "等于", "&": "和", "-": "横杠",
           "_": "下划线", "#": "井号", ":": "冒号", "%": "百分号", "+": "加", "~": "波浪号"},
}
_FAMILY = {"cmn": "zh", "yue": "zh"}


@dataclass(frozen=True)
class Address:
    """One address in the display text and where its reading sits in the spoken text."""

    display: str
    display_start: int
    spoken_start: int
    spoken_end: int


@dataclass(frozen=True)
class Script:
    """What the captions show (``display``) and what the voice is given (``spoken``) for one text."""

    display: str
    spoken: str
    addresses: tuple[Address, ...] = ()


def find_addresses(text: str) -> list[tuple[int, int]]:
    """(start, end) of each address in ``text``, without the sentence punctuation that follows it."""
    spans = []
    for match in _ADDRESS.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _TRAILING:
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def say_address(address: str, lang: str) -> str:
    """How a person reads ``address`` aloud in ``lang``: ``example dot com slash docs, page equals 2``.

    The scheme is left out, as people leave it out; letters and digits are kept as written, so the
    voice says words as words (``docs``) and spells what it cannot say.
    """
    family = lang.split("-")[0]
    symbols = _SYMBOLS.get(_FAMILY.get(family, family), _SYMBOLS["en"])
    words: list[str] = []
    for piece in _PIECE.findall(_SCHEME.sub("", address).rstrip("/")):
        if piece.isalnum():
            words.append(piece)
        elif piece in symbols:
            said = symbols[piece]
            if said in (",", "，") and words:
                words[-1] += said
            else:
                words.append(said)
    glue = "" if family in ("zh", "cmn", "yue", "ja") else " "
    return glue.join(words)


def script(text: str, lang: str) -> Script:
    """The display and spoken forms of ``text``: equal except that each address is read out."""
    parts: list[str] = []
    addresses: list[Address] = []
    cursor = length = 0
    for start, end in find_addresses(text):
        plain = text[cursor:start]
        parts.append(plain)
        length += len(plain)
        said = say_address(text[start:end], lang)
        addresses.append(Address(text[start:end], start, length, length + len(said)))
        parts.append(said)
        length += len(said)
        cursor = end
    parts.append(text[cursor:])
    return Script(text, "".join(parts), tuple(addresses))


def display_words(words: list[Word], script: Script) -> list[Word]:
    """The TTS's word timings with each address's spoken words folded back into the address as written.

    Timed words are found in the spoken text in order; words the backend reports in some other form
    (so that their place is unknown) are passed through unchanged.
    """
    if not script.addresses:
        return words
    placed: list[tuple[int, Word]] = []
    cursor = 0
    for word in words:
        at = script.spoken.find(word.text, cursor)
        if at < 0:
            return words
        placed.append((at, word))
        cursor = at + len(word.text)
    out: list[Word] = []
    i = 0
    while i < len(placed):
        at, word = placed[i]
        address = next((a for a in script.addresses if at < a.spoken_end and at + len(word.text) > a.spoken_start),
                       None)
        if address is None:
            out.append(word)
            i += 1
            continue
        j = i
        while j + 1 < len(placed) and placed[j + 1][0] < address.spoken_end:
            j += 1
        last_at, last = placed[j]
        before = script.spoken[at:address.spoken_start] if at < address.spoken_start else ""
        after = script.spoken[address.spoken_end:last_at + len(last.text)]
        out.append(Word(before + address.display + after, word.start, last.end))
        i = j + 1
    return out
