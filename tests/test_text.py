"""Text and language rules shared by the engine and the bridge: what is speakable, what is a language tag,
and which voice speaks a tag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, RenderRequest
from engine.errors import InvalidText, UnknownVoice
from engine.text import clean_text, detect_lang, language_tag, speakable_text
from engine.tts import Voice
from engine.tts.languages import fallbacks, speaks, voice_for_language

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("lang", "tag"), [
    ("auto", "auto"), ("", "auto"), (None, "auto"), ("en", "en"), ("en-US", "en-us"), ("cmn", "cmn"),
    ("zh-Hans-CN", "zh-hans-cn"), ("cmn-Latn-pinyin", "cmn-latn-pinyin"), ("es-419", "es-419"),
    ("en-GB-x-rp", "en-gb-x-rp"), ("de-CH-1996", "de-ch-1996"), ("sl-rozaj-biske", "sl-rozaj-biske"),
])
def test_language_tags_of_bcp_47_shape_pass(lang: str | None, tag: str) -> None:
    assert language_tag(lang) == tag


@pytest.mark.parametrize("lang", [
    "../", "../../../../../../../../../../../../etc", "..\\x", "a/b", "en\x00", "en_US", "e", "x-private", "en-",
    "-en", "en--us", "en us", "ｅｎ", "123", "a" * 36,
])
def test_anything_else_is_not_a_language_tag(lang: str) -> None:
    with pytest.raises(UnknownVoice, match="is not a language tag") as err:
        language_tag(lang)
    assert err.value.field == "lang"


def test_detect_lang_keeps_the_aliases_and_guesses_auto() -> None:
    assert detect_lang("Hello", "en-US") == "en" and detect_lang("Hi", "cmn") == "zh"
    assert detect_lang("你好", "auto") == "zh" and detect_lang("Hello", "auto") == "en"
    assert detect_lang("Bonjour", "fr-FR") == "fr-fr"


@pytest.mark.parametrize(("text", "message"), [
    ("", "text is empty"), (" \t\n", "text is empty"), ("\x00\x07\x1b", "text is empty"),
    ("😀🎉", "empty of words"), ("?!…", "empty of words"), ("\u200b\U0001F600", "empty of words"),
    ("hi \ud800", "not valid Unicode"),
])
def test_unspeakable_text_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidText, match=message) as err:
        speakable_text(text)
    assert err.value.field == "text"


def test_speakable_text_is_normalised() -> None:
    assert speakable_text("  Hi\x00there\n\tyou 😀 ") == "Hi there you 😀"
    assert speakable_text("e\u0301") == "\u00e9"
    with pytest.raises(InvalidText, match="the limit is 5"):
        clean_text("Hello world", 5)


ESPEAK_EN = Voice("en", "English (Great Britain)", ("en-gb",), "espeak")
ESPEAK_CMN = Voice("cmn", "Chinese (Mandarin)", ("cmn",), "espeak")
PIPER = Voice("en_US-joe-medium", "joe (English)", ("en-us", "en"), "piper")
KOKORO_ZH = Voice("zf_xiaobei", "zf_xiaobei", ("cmn",), "openai")
ALLOY = Voice("alloy", "alloy", (), "openai")


def test_fallbacks_go_from_specific_to_general_with_mandarin_both_ways() -> None:
    assert fallbacks("zh-hans-cn") == ["zh-hans-cn", "zh-hans", "zh", "cmn"]
    assert fallbacks("cmn") == ["cmn", "zh"]


def test_which_voice_speaks_a_tag() -> None:
    voices = [ESPEAK_CMN, ESPEAK_EN]
    assert voice_for_language("en-gb", voices) is ESPEAK_EN
    assert voice_for_language("en", voices) is ESPEAK_EN  # by id
    assert voice_for_language("zh-hans-cn", voices) is ESPEAK_CMN
    assert voice_for_language("fr", voices) is None
    assert speaks(PIPER, "en-gb") and speaks(PIPER, "en") and not speaks(PIPER, "zh")
    assert speaks(KOKORO_ZH, "zh") and not speaks(KOKORO_ZH, "en")
    assert speaks(ALLOY, "fr")  # a server voice of unknown languages is taken to speak any


def test_the_engine_refuses_a_bad_lang_before_any_synthesis(engine: Engine, tmp_path: Path) -> None:
    request = RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4", text="Hello.", lang="../")
    with pytest.raises(UnknownVoice) as err:
        engine.speak(request)
    assert err.value.field == "lang" and str(err.value).startswith("lang '../' is not a language tag")


def test_the_engine_cli_refuses_a_path_as_voice(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "engine", "render", "--text", "Hello", "--voice", "../../etc",
                          "--avatar", "astronaut-photo", "--out", str(tmp_path / "x.mp4"), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2, out.stderr
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "unknown_voice" and error["field"] == "voice" and "not a voice name" in error["message"]
    assert not (tmp_path / "x.mp4").exists()
