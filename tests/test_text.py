"""Text and language rules shared by the engine and the bridge: what is speakable, what is a language tag,
which voice speaks a tag; and (issue 12 §7) what the voice is given and the subtitles show for emoji, web and
e-mail addresses and long sentences, and what the user is told about the language."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, RenderRequest, subtitles
from engine.errors import InvalidText, UnknownVoice
from engine.language_id import NAMES, identify
from engine.links import display_words, say_address, script
from engine.pictographs import strip_pictographs
from engine.settings import EngineSettings
from engine.text import choose_language, clean_text, detect_lang, language_tag, speakable_text
from engine.tts import Voice, Word, get_backend
from engine.tts.base import SynthesisRequest
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
    assert speakable_text("  Hi\x00there\n\tyou 😀 ") == "Hi there you"
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


# --- issue 12 §7: emoji, addresses, line breaks and language, as the user sees and hears them ---------

@pytest.mark.parametrize(("text", "kept"), [
    ("Great job 👍!", "Great job!"),
    ("Team 👩🏽\u200d💻 ready", "Team ready"),  # ZWJ sequence with a skin tone
    ("Vive la France 🇫🇷 !", "Vive la France !"),  # regional-indicator flag
    ("Go 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f team", "Go team"),  # tag flag
    ("I ❤️ you", "I you"),  # variation selector
    ("Press 1️⃣ now", "Press 1 now"),  # keycap
    ("Hi😀there", "Hi there"),
    ("café © 2024 ™ — 你好，世界！ Ελλάδα", "café © 2024 ™ — 你好，世界！ Ελλάδα"),
    ("क्\u200dष", "क्\u200dष"),  # a ZWJ inside Devanagari is spelling, not emoji
])
def test_emoji_leave_the_text_but_letters_accents_cjk_and_punctuation_stay(text: str, kept: str) -> None:
    assert " ".join(strip_pictographs(text).split()) == kept
    if any(ch.isalnum() for ch in kept):
        assert speakable_text(text) == kept


def test_emoji_never_reach_the_voice(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[str] = []
    backend = get_backend(engine.settings, "espeak")
    real = backend.synthesize
    monkeypatch.setattr(backend, "synthesize", lambda request: heard.append(request.text) or real(request))
    spoken = engine.speak(RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4",
                                        text="Great news 🎉🎉, we shipped it 🚀!"))
    assert heard == ["Great news, we shipped it!"]
    assert [w.text for w in spoken.speech.words] == ["Great", "news,", "we", "shipped", "it!"]


@pytest.mark.parametrize(("address", "lang", "said"), [
    ("https://example.com/docs?page=2", "en", "example dot com slash docs, page equals 2"),
    ("jane.doe@example.org", "en", "jane dot doe at example dot org"),
    ("jane.doe@example.org", "fr", "jane point doe arobase example point org"),
    ("www.beispiel.de/hilfe", "de", "www Punkt beispiel Punkt de Schrägstrich hilfe"),
    ("https://example.com/", "zh", "example点com"),
])
def test_an_address_is_read_as_a_person_says_it(address: str, lang: str, said: str) -> None:
    assert say_address(address, lang) == said


def test_addresses_are_found_whole_without_the_sentence_punctuation() -> None:
    text = "See https://example.com/docs?page=2. Mail jane.doe@example.org, or visit example.com! e.g. v3.14"
    s = script(text, "en")
    assert [a.display for a in s.addresses] == ["https://example.com/docs?page=2", "jane.doe@example.org",
                                                "example.com"]
    assert s.spoken == ("See example dot com slash docs, page equals 2. Mail jane dot doe at example dot org, "
                        "or visit example dot com! e.g. v3.14")


def test_timed_words_of_an_address_fold_back_into_the_address() -> None:
    s = script("Go to https://example.com/docs now.", "en")
    spoken = s.spoken.split()
    words = [Word(w, i * 0.5, i * 0.5 + 0.4) for i, w in enumerate(spoken)]
    assert [(w.text, w.start, w.end) for w in display_words(words, s)] == [
        ("Go", 0.0, 0.4), ("to", 0.5, 0.9), ("https://example.com/docs", 1.0, 3.4), ("now.", 3.5, 3.9)]


def test_subtitles_and_speech_keep_urls_and_emails_whole(engine: Engine, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[str] = []
    backend = get_backend(engine.settings, "espeak")
    real = backend.synthesize
    monkeypatch.setattr(backend, "synthesize", lambda request: heard.append(request.text) or real(request))
    text = "Read https://example.com/docs?page=2 first, then write to jane.doe@example.org with questions."
    spoken = engine.speak(RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4", text=text))
    assert heard == ["Read example dot com slash docs, page equals 2 first, then write to jane dot doe at "
                     "example dot org with questions."]
    srt = subtitles.to_srt(subtitles.cues(spoken.speech.words))
    lines = [line for line in srt.splitlines() if line and "-->" not in line and not line.isdigit()]
    assert any("https://example.com/docs?page=2" in line for line in lines), srt
    assert any("jane.doe@example.org" in line for line in lines), srt
    assert " . " not in srt and ":// " not in srt and " @ " not in srt


def timed(text: str, seconds_per_word: float = 0.2) -> list[Word]:
    return [Word(w, i * seconds_per_word, (i + 1) * seconds_per_word) for i, w in enumerate(text.split())]


def cue_lines(words: list[Word]) -> list[list[str]]:
    return [cue.text.split("\n") for cue in subtitles.cues(words)]


def test_lines_break_at_clause_boundaries() -> None:
    text = ("Today we look at three things: the data we collect, the model we train on it, and the way we "
            "check the results before anyone sees them.")
    lines = cue_lines(timed(text))
    assert lines == [["Today we look at", "three things:"], ["the data we collect,"],
                     ["the model we train on it,"], ["and the way we check", "the results before"],
                     ["anyone sees them."]]
    for cue in lines:
        assert all(subtitles.width(line) <= subtitles.MAX_WIDTH for line in cue)


def test_a_long_address_is_never_split_across_lines_or_cues() -> None:
    url = "https://docs.example.com/guides/getting-started/installation?platform=linux"
    lines = cue_lines(timed(f"Everything is explained at {url} in detail."))
    assert [url] in lines
    assert sum(line.count("example.com") for cue in lines for line in cue) == 1


def test_cjk_lines_break_at_punctuation_and_count_double_width() -> None:
    words = [Word(w, i * 0.3, (i + 1) * 0.3) for i, w in enumerate(
        ["今天", "我们", "学习", "如何", "把", "一句话", "变成", "视频，", "然后", "发给", "朋友们", "看看。"])]
    cues = subtitles.cues(words)
    assert [c.text for c in cues] == ["今天我们学习如何\n把一句话变成视频，", "然后发给朋友们看看。"]
    assert subtitles.width("视频") == 4 and subtitles.width("ab") == 2


# What --lang auto picks: a few everyday sentences per language a voice speaks (Mandarin included).
SENTENCES = {
    "en": ["Welcome to our course on machine learning.", "Please check the attached file before the meeting."],
    "fr": ["Bienvenue dans notre cours sur l'apprentissage automatique.",
           "Veuillez vérifier le fichier joint avant la réunion de demain."],
    "de": ["Willkommen zu unserem Kurs über maschinelles Lernen.",
           "Bitte prüfen Sie die angehängte Datei vor dem Treffen morgen."],
    "es": ["Bienvenidos a nuestro curso de aprendizaje automático.",
           "Por favor, revise el archivo adjunto antes de la reunión de mañana."],
    "it": ["Benvenuti al nostro corso di apprendimento automatico.",
           "Per favore controlla il file allegato prima della riunione di domani."],
    "pt": ["Bem-vindos ao nosso curso de aprendizado de máquina.",
           "Por favor, verifique o arquivo anexo antes da reunião de amanhã."],
    "nl": ["Welkom bij onze cursus over machinaal leren.", "Het is mooi weer vandaag, dus we lopen naar het park."],
    "ru": ["Добро пожаловать на наш курс по машинному обучению.",
           "Пожалуйста, проверьте прикреплённый файл до завтрашней встречи."],
    "zh": ["欢迎来到我们的机器学习课程。", "今天天气很好，所以我们走路去公园。"],
    "ja": ["機械学習のコースへようこそ。", "明日の会議の前に添付ファイルを確認してください。"],
    "ko": ["머신 러닝 강좌에 오신 것을 환영합니다.", "오늘은 날씨가 좋아서 공원까지 걸어갈 거예요."],
    "ar": ["مرحبا بكم في دورتنا حول تعلم الآلة.", "الطقس جميل اليوم، لذلك سنمشي إلى الحديقة."],
    "hi": ["कृपया कल की बैठक से पहले संलग्न फ़ाइल देखें।", "आज मौसम अच्छा है, इसलिए हम पार्क तक पैदल चलेंगे।"],
    "pl": ["Witamy na naszym kursie uczenia maszynowego.", "Dziś jest ładna pogoda, więc pójdziemy pieszo do parku."],
    "tr": ["Makine öğrenimi kursumuza hoş geldiniz.", "Bugün hava güzel, bu yüzden parka yürüyerek gideceğiz."],
    "vi": ["Chào mừng bạn đến với khóa học máy học của chúng tôi.",
           "Hôm nay trời đẹp, vì vậy chúng ta sẽ đi bộ đến công viên."],
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_auto_detection_names_the_language_it_picked(lang: str) -> None:
    for sentence in SENTENCES[lang]:
        choice = choose_language(sentence, "auto")
        assert choice.tag == lang, sentence
        assert choice.notes == (f"auto-detected language: {identify(sentence).name} ({lang})",)


def test_auto_detection_covers_the_languages_the_voices_speak() -> None:
    """Every language of a listed voice can be auto-detected, but for the few the detector does not know
    (constructed and rare languages), which need lang set."""
    unknown_to_the_detector = {"bpy", "chr", "cv", "hak", "haw", "hyw", "ia", "io", "jbo", "kaa", "kl", "lfn", "mi",
                               "mto", "nci", "nog", "pap", "piqd", "py", "qdb", "quc", "qya", "sd", "shn", "sjn",
                               "smj", "ti", "tn", "xex"}
    families = {lang.split("-")[0] for v in get_backend(EngineSettings(_env_file=None), "espeak").voices()
                for lang in v.languages}
    detectable = set(NAMES) | {"cmn"}
    assert families - detectable == unknown_to_the_detector
    assert {"en", "zh", "fr", "de", "es", "ja", "ko", "pt", "it", "hi"} <= detectable  # Kokoro's and HeyGem's


def test_french_text_is_spoken_french_and_the_user_is_told(engine: Engine, tmp_path: Path) -> None:
    text = "Bonjour à tous, je vais vous présenter notre nouveau produit."
    spoken = engine.speak(RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4", text=text))
    assert spoken.lang == "fr"
    assert spoken.notes == ("auto-detected language: French (fr)",)


@pytest.mark.parametrize("text", ["Hello", "Merci", "OK!", "Salut"])
def test_short_text_falls_back_to_english_and_says_so(text: str) -> None:
    choice = choose_language(text, "auto")
    assert choice.tag == "en" and choice.text_lang is None
    assert len(choice.notes) == 1 and choice.notes[0].startswith("lang auto could not tell the language")
    assert "read as English (en): set lang to choose" in choice.notes[0]


def test_a_given_lang_that_the_text_is_plainly_not_in_gets_a_note() -> None:
    choice = choose_language("Welcome to our course on machine learning, where we start from the basics.", "fr")
    assert choice.tag == "fr"
    assert choice.notes == ("the text looks like English (en), but lang is fr: it is read as French; set lang to "
                            "en or auto to have it read as English",)
    assert choose_language("Bienvenue dans notre cours sur l'apprentissage automatique.", "fr-FR").notes == ()


def test_a_voice_that_does_not_speak_the_text_gets_a_note(engine: Engine, tmp_path: Path) -> None:
    text = "Bonjour à tous, je vais vous présenter notre nouveau produit."
    spoken = engine.speak(RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4", text=text, voice="en-us"))
    assert spoken.notes == (
        "auto-detected language: French (fr)",
        "voice 'en-us' speaks en-us, but the text is in French (fr): it will sound foreign; choose a voice that "
        "speaks fr (`python -m engine voices` or GET /v1/voices), or leave voice empty")
    quiet = engine.speak(RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4", text=text, voice="fr"))
    assert quiet.notes == ("auto-detected language: French (fr)",)
    short = engine.speak(RenderRequest(avatar="astronaut-photo", out=tmp_path / "x.mp4", text="Salut", voice="fr"))
    assert not any("voice" in note for note in short.notes)  # an unsure guess blames no voice


def test_espeak_names_the_voice_it_will_use() -> None:
    espeak = get_backend(EngineSettings(_env_file=None), "espeak")
    assert espeak.speaker(SynthesisRequest("Bonjour", "fr")).id == "fr"
    assert espeak.speaker(SynthesisRequest("Hi", "en", voice="en-GB-x-rp")).id == "en-gb-x-rp"
