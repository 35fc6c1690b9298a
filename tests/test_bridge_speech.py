"""What a job says and what renders it, checked at submit: voice, lang, text and renderer.

Bad values are a 422 naming the field (voice and lang point at GET /v1/voices) and make no job. A job
that reached the table anyway (queued by an older bridge) fails cleanly on a fresh worker: `lang: "../"`
used to crash libespeak-ng with SIGSEGV there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.keys import KeyStore
from engine import EngineSettings
from tests.bridge_fixtures import (
    REPO,
    Bridge,
    RedisServer,
    make_settings,
    run_bridge_worker,
    run_redis_server,
    worker_children,
    worker_env,
)

AVATAR = "astronaut-photo"
PATHS = ["../../../../../../../../../../../../etc", "..\\x", "a/b", "en\x00us", "../"]


def _bridge(root: Path, redis_url: str, storage: Path, **engine: Any) -> Bridge:
    settings = make_settings(root, redis_url)
    engine_settings = EngineSettings(_env_file=None, storage_root=storage, **engine)  # type: ignore[call-arg]
    app = create_app(settings, engine_settings=engine_settings)
    return Bridge(app, app.test_client(), settings, engine_settings, KeyStore(settings.keys_path).create())


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path) -> Bridge:
    """The API with the default engine settings (eSpeak, procedural) and no worker: jobs stay queued."""
    return _bridge(tmp_path_factory.mktemp("bridge"), redis_server.url, storage)


def _jobs(bridge: Bridge, sub: str) -> list[dict[str, Any]]:
    return list(bridge.client.get("/v1/jobs?limit=100", headers=bridge.auth(sub)).get_json()["jobs"])


def refused(bridge: Bridge, body: dict[str, Any], field: str) -> str:
    """Submit ``body`` (with the sample avatar); assert a 422 problem on ``field`` and that no job was made."""
    sub = "tenant-refused"
    response = bridge.submit({"avatar_id": AVATAR, **body}, sub=sub)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["field"] == field and problem["detail"].startswith(f"{field}"), problem
    assert problem["errors"][0]["field"] == field
    assert _jobs(bridge, sub) == []
    return str(problem["detail"])


def accepted(bridge: Bridge, body: dict[str, Any]) -> None:
    response = bridge.submit({"avatar_id": AVATAR, **body}, sub="tenant-ok")
    assert response.status_code == 202, response.get_data(as_text=True)


# --- voice and lang -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PATHS, "no-such-voice", "EN-US", "en-us "])
def test_a_voice_not_listed_is_422_pointing_at_the_list(bridge: Bridge, name: str) -> None:
    detail = refused(bridge, {"text": "Hello.", "voice": name}, "voice")
    assert "GET /v1/voices" in detail


@pytest.mark.parametrize("lang", [*PATHS, "en_US", "e", "x-private", "en-", "-en", "en--us", "zh-Hans-CN-"])
def test_a_malformed_lang_is_422_pointing_at_the_list(bridge: Bridge, lang: str) -> None:
    detail = refused(bridge, {"text": "Hello.", "lang": lang}, "lang")
    assert "not a language tag" in detail and "GET /v1/voices" in detail


def test_a_well_formed_lang_no_voice_speaks_is_422(bridge: Bridge) -> None:
    detail = refused(bridge, {"text": "Hello.", "lang": "tlh"}, "lang")
    assert "no voice of the server's espeak TTS speaks 'tlh'" in detail and "GET /v1/voices" in detail


def test_a_voice_asked_for_a_language_it_does_not_speak_is_422(bridge: Bridge) -> None:
    detail = refused(bridge, {"text": "Bonjour.", "voice": "en-us", "lang": "fr"}, "lang")
    assert "voice 'en-us' speaks en-us, not 'fr'" in detail and "GET /v1/voices" in detail


def test_a_bad_lang_is_refused_with_an_audio_url_too(bridge: Bridge) -> None:
    refused(bridge, {"audio_url": "https://files.example.com/hello.mp3", "lang": "../"}, "lang")


@pytest.mark.parametrize("body", [
    {"lang": "en"}, {"lang": "en-US"}, {"lang": "en-GB"}, {"lang": "fr-FR"}, {"lang": "cmn"}, {"lang": "zh"},
    {"lang": "zh-Hans-CN"}, {"lang": "auto"}, {"voice": "en-us"}, {"voice": "en-us", "lang": "en"},
    {"voice": "cmn", "lang": "zh-Hans"}, {"voice": "fr", "lang": "auto"},
])
def test_listed_voices_and_spoken_languages_are_accepted(bridge: Bridge, body: dict[str, Any]) -> None:
    accepted(bridge, {"text": "Hello there.", **body})


def test_the_voice_list_is_what_submit_accepts(bridge: Bridge) -> None:
    voices = bridge.client.get("/v1/voices", headers=bridge.auth()).get_json()["voices"]
    piper = next(v for v in voices if v["backend"] == "piper")
    accepted(bridge, {"text": "Joe speaks.", "voice": piper["id"], "lang": "en-US"})
    refused(bridge, {"text": "Joe speaks.", "voice": piper["id"], "lang": "zh"}, "lang")


def test_auto_text_the_default_voice_cannot_speak_is_422(tmp_path: Path, redis_server: RedisServer,
                                                          storage: Path) -> None:
    pytest.importorskip("piper")
    piper_only = _bridge(tmp_path, redis_server.url, storage, tts_backend="piper")
    detail = refused(piper_only, {"text": "你好，世界。"}, "lang")
    assert "looks like 'zh'" in detail and "GET /v1/voices" in detail
    accepted(piper_only, {"text": "Hello, world."})
    accepted(piper_only, {"text": "你好，世界。", "voice": "cmn"})  # an eSpeak voice speaks it instead


# --- text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "reason"), [
    ("😀🎉👍", "empty of words"), ("?!… — ¡¿", "empty of words"), ("\u200b\u2060\U0001F600", "empty of words"),
    ("\x00\x07\x1b", "text is empty"), (" \t\n ", "must contain something to say"),
    ("\ud800", "not valid Unicode"),
])
def test_text_with_nothing_to_speak_is_422(bridge: Bridge, text: str, reason: str) -> None:
    detail = refused(bridge, {"text": text}, "text")
    assert reason in detail


def test_text_with_a_word_among_symbols_is_accepted(bridge: Bridge) -> None:
    accepted(bridge, {"text": "😀 Hi! 🎉"})


# --- renderer -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("renderer", "setting"), [
    ("wav2lip", "ENGINE_WAV2LIP_CHECKPOINT"), ("heygem", "ENGINE_HEYGEM_URL and ENGINE_HEYGEM_DATA_DIR"),
])
def test_a_renderer_the_server_has_not_set_up_is_422(bridge: Bridge, renderer: str, setting: str) -> None:
    detail = refused(bridge, {"text": "Hello.", "renderer": renderer}, "renderer")
    assert f"{renderer} is not set up on this server (the operator must set {setting}" in detail
    assert "leave renderer empty for the server's default (procedural)" in detail


def test_an_unconfigured_default_renderer_is_422_and_procedural_still_works(
        tmp_path: Path, redis_server: RedisServer, storage: Path) -> None:
    wav2lip_default = _bridge(tmp_path, redis_server.url, storage, renderer="wav2lip")
    detail = refused(wav2lip_default, {"text": "Hello."}, "renderer")
    assert "default renderer wav2lip is not set up" in detail and "ENGINE_WAV2LIP_CHECKPOINT" in detail
    accepted(wav2lip_default, {"text": "Hello.", "renderer": "procedural"})


def test_configured_renderers_are_accepted(tmp_path: Path, redis_server: RedisServer, storage: Path) -> None:
    configured = _bridge(tmp_path, redis_server.url, storage, wav2lip_checkpoint=tmp_path / "wav2lip_gan.pth",
                         heygem_url="http://127.0.0.1:8383", heygem_data_dir=tmp_path)
    accepted(configured, {"text": "Hello.", "renderer": "wav2lip"})
    accepted(configured, {"text": "Hello.", "renderer": "heygem"})


# --- a bad lang already in the table, on a fresh worker ---------------------------------------------


def test_lang_dot_dot_slash_as_a_fresh_workers_first_job_fails_it_cleanly(tmp_path: Path, storage: Path) -> None:
    with run_redis_server(tmp_path) as own:  # its own queue: the poison job is the first message the worker sees
        _fresh_worker_meets_a_bad_lang(_bridge(tmp_path / "bridge", own.url, storage), tmp_path, storage)


def _fresh_worker_meets_a_bad_lang(bridge: Bridge, tmp_path: Path, storage: Path) -> None:
    response = bridge.submit({"text": "Hello there.", "avatar_id": AVATAR})
    assert response.status_code == 202, response.get_data(as_text=True)
    poison = response.get_json()["id"]
    # What a bridge without these checks queued: the same row, with lang "../" (published, no worker yet).
    with sqlite3.connect(bridge.settings.storage_root / "bridge.db") as table:
        changed = table.execute("UPDATE jobs SET inputs = json_set(inputs, '$.lang', '../') WHERE id = ?", (poison,))
        assert changed.rowcount == 1
    log = tmp_path / "worker.log"
    with run_bridge_worker(worker_env(bridge.settings, storage), log, REPO) as worker:
        first = bridge.wait(poison)
        assert first["status"] == "failed" and first["attempts"] == 1, first
        assert first["error"]["code"] == "unknown_voice"
        assert first["error"]["message"].startswith("lang '../' is not a language tag")
        render_process = worker_children(worker)
        healthy = bridge.wait(bridge.submit({"text": "Still here.", "avatar_id": AVATAR}).get_json()["id"])
        assert healthy["status"] == "succeeded" and healthy["attempts"] == 1, healthy
        assert worker_children(worker) == render_process and worker.process.poll() is None
    text = log.read_text(errors="replace")
    assert "SIGSEGV" not in text and "signal 11" not in text
