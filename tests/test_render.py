"""End-to-end renders: what a user gets back is a browser-playable MP4 that follows the speech."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import Engine, EngineSettings, RenderRequest
from engine.evaluate import evaluate
from engine.tts import get_backend
from engine.tts.base import SynthesisRequest
from engine.video import read_frames
from engine.wav import write_wav
from tests.conftest import REPO, ffmpeg, ffprobe, top_level_boxes

EN = "Hello! Welcome to the course. Today we learn how a single line of text becomes a video."
ZH = "你好，欢迎来到我们的课程。今天我们学习如何把一句话变成视频。"


def stream(info: dict, kind: str) -> dict:
    return next(s for s in info["streams"] if s["codec_type"] == kind)


def assert_playable(path: Path, expected_s: float) -> dict:
    info = ffprobe(path)
    video, audio = stream(info, "video"), stream(info, "audio")
    assert video["codec_name"] == "h264" and video["profile"] == "High"
    assert video["pix_fmt"] == "yuv420p"
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "48000"
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert abs(float(info["format"]["duration"]) - expected_s) <= 0.1
    assert abs(float(video["duration"]) - expected_s) <= 0.1
    assert abs(float(audio["duration"]) - expected_s) <= 0.1
    return info


@pytest.mark.parametrize(("text", "lang"), [(EN, "en"), (ZH, "zh")])
def test_text_renders_in_english_and_mandarin(engine: Engine, settings: EngineSettings, tmp_path: Path,
                                              text: str, lang: str) -> None:
    out = tmp_path / f"{lang}.mp4"
    result = engine.render(RenderRequest(avatar="astronaut", out=out, text=text, subtitles=True))
    assert result.lang == lang
    speech_plus_pads = result.speech_s + settings.lead_in_s + settings.lead_out_s
    info = assert_playable(out, speech_plus_pads)
    video = stream(info, "video")
    assert (video["width"], video["height"]) == (1280, 720)
    assert video["avg_frame_rate"] == "25/1"
    poster = cv2.imread(str(result.poster))
    assert poster.shape[:2] == (720, 1280)
    vtt = result.subtitles_vtt.read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT")
    assert ("Welcome" in vtt) if lang == "en" else ("欢迎" in vtt)
    assert "-->" in result.subtitles_srt.read_text(encoding="utf-8")
    report = evaluate(out, settings)
    assert report.peak_r >= 0.6, report
    assert abs(report.lag_frames) <= 1, report
    assert report.ssim_above_nose >= 0.98, report


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory, settings: EngineSettings) -> tuple[Path, float]:
    speech = get_backend(settings, "espeak").synthesize(SynthesisRequest("Good morning, everyone.", "en"))
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    write_wav(path, speech.samples, speech.sample_rate)
    return path, speech.duration


@pytest.mark.parametrize(("ext", "codec"), [
    (".wav", ["-c:a", "pcm_s16le", "-ar", "44100", "-ac", "2"]),
    (".mp3", ["-c:a", "libmp3lame", "-ar", "22050"]),
    (".m4a", ["-c:a", "aac", "-ar", "48000"]),
    (".aac", ["-c:a", "aac", "-ar", "32000"]),
    (".flac", ["-c:a", "flac", "-ar", "16000"]),
    (".ogg", ["-c:a", "libvorbis", "-ar", "44100", "-ac", "2"]),
])
def test_every_audio_format_renders(engine: Engine, settings: EngineSettings, tmp_path: Path,
                                    speech_wav: tuple[Path, float], ext: str, codec: list[str]) -> None:
    src, seconds = speech_wav
    audio = tmp_path / f"speech{ext}"
    ffmpeg("-i", str(src), *codec, str(audio))
    out = tmp_path / "out.mp4"
    result = engine.render(RenderRequest(avatar="astronaut-photo", out=out, audio=audio))
    assert abs(result.speech_s - seconds) < 0.08
    assert_playable(out, result.speech_s + settings.lead_in_s + settings.lead_out_s)
    assert result.tts is None


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory, storage: Path) -> Path:
    """1.2 s of the sample template at 640x360: enough to track, quick to convert."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    ffmpeg("-i", str(storage / "avatars" / "astronaut" / "forward.mp4"), "-t", "1.2", "-vf", "scale=640:360",
           "-c:v", "libx264", "-crf", "18", str(path))
    return path


@pytest.mark.parametrize(("ext", "codec"), [
    (".mp4", ["-c:v", "libx264"]), (".mov", ["-c:v", "libx264"]), (".mkv", ["-c:v", "libx264"]),
    (".avi", ["-c:v", "mpeg4", "-q:v", "3"]), (".webm", ["-c:v", "libvpx-vp9", "-b:v", "1M"]),
    (".flv", ["-c:v", "flv1", "-q:v", "3"]),
])
def test_every_video_template_format(settings: EngineSettings, tmp_path: Path, short_clip: Path,
                                     ext: str, codec: list[str]) -> None:
    template = tmp_path / f"template{ext}"
    ffmpeg("-i", str(short_clip), *codec, str(template))
    local = EngineSettings(storage_root=tmp_path / "store")
    out = tmp_path / "out.mp4"
    result = Engine(local).render(RenderRequest(avatar=str(template), out=out, text="Hi there."))
    info = assert_playable(out, result.duration_s)
    assert (stream(info, "video")["width"], stream(info, "video")["height"]) == (640, 360)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".png", ".webp"])
def test_every_photo_template_format(tmp_path: Path, ext: str) -> None:
    from skimage import data

    photo = tmp_path / f"face{ext}"
    assert cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.mp4"
    result = Engine(EngineSettings(storage_root=tmp_path / "store")).render(
        RenderRequest(avatar=str(photo), out=out, text="Hi there."))
    assert_playable(out, result.duration_s)
    assert (result.width, result.height) == (512, 512)


def upper_face(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame[:330], cv2.COLOR_BGR2GRAY).astype(np.float32)


def test_photo_avatar_is_alive_not_frozen(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "alive.mp4"
    engine.render(RenderRequest(avatar="astronaut-photo", out=out, text=EN))
    frames = [upper_face(f) for f in read_frames(out, 512, 512)]
    drift = max(np.abs(f - frames[0]).mean() for f in frames)
    changes = [np.abs(a - b).mean() for a, b in itertools.pairwise(frames)]
    assert drift > 1.5, "a photo avatar must sway and blink, not stay frozen"
    assert max(changes) < 3, "motion must be smooth, never a jump"


def test_short_template_plays_forward_then_backward_without_a_jump(tmp_path: Path, short_clip: Path) -> None:
    local = Engine(EngineSettings(storage_root=tmp_path / "store"))
    out = tmp_path / "long.mp4"
    result = local.render(RenderRequest(avatar=str(short_clip), out=out, text=EN))
    assert result.duration_s > 3 * 1.2
    frames = [cv2.cvtColor(f[:150], cv2.COLOR_BGR2GRAY).astype(np.float32) for f in read_frames(out, 640, 360)]
    template = [cv2.cvtColor(f[:150], cv2.COLOR_BGR2GRAY).astype(np.float32)
                for f in read_frames(short_clip, 640, 360)]
    step = max(np.abs(a - b).mean() for a, b in itertools.pairwise(template))
    jumps = [np.abs(a - b).mean() for a, b in itertools.pairwise(frames)]
    assert max(jumps) < 2.5 * step + 1.0
    n = len(template)
    turn = frames[n]  # after template frames 0..n-1 the output plays n-2, n-3, …
    assert np.abs(turn - template[n - 2]).mean() < np.abs(turn - template[0]).mean()


def test_long_template_is_cut_to_the_speech(engine: Engine, settings: EngineSettings, tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    result = engine.render(RenderRequest(avatar="astronaut", out=out, text="Yes."))
    assert result.duration_s < 8.0 / 2
    assert_playable(out, result.speech_s + settings.lead_in_s + settings.lead_out_s)


@pytest.mark.parametrize(("resolution", "size"), [("720p", (720, 720)), ("1080p", (1080, 1080))])
def test_resolution_on_request(engine: Engine, tmp_path: Path, resolution: str, size: tuple[int, int]) -> None:
    out = tmp_path / "res.mp4"
    result = engine.render(RenderRequest(avatar="astronaut-photo", out=out, text="Hi.", resolution=resolution))
    video = stream(ffprobe(out), "video")
    assert (video["width"], video["height"]) == size == (result.width, result.height)


def test_second_render_of_a_template_file_does_no_face_work(tmp_path: Path, short_clip: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    local = Engine(EngineSettings(storage_root=tmp_path / "store"))
    local.render(RenderRequest(avatar=str(short_clip), out=tmp_path / "a.mp4", text="One."))

    def no_face_work(*args, **kwargs):
        raise AssertionError("face tracking ran again for a cached template")

    monkeypatch.setattr("engine.avatars.track_frames", no_face_work)
    store = tmp_path / "store"
    before = {path: path.stat().st_mtime_ns for path in store.rglob("*")}
    local.render(RenderRequest(avatar=str(short_clip), out=tmp_path / "b.mp4", text="Two."))
    assert {path: path.stat().st_mtime_ns for path in store.rglob("*")} == before  # nothing prepared again


def test_renders_with_the_network_cut_off(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the engine tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    result = engine.render(RenderRequest(avatar="astronaut-photo", out=tmp_path / "offline.mp4", text="Offline."))
    assert result.video.is_file()


def test_cli_render_json_and_eval(settings: EngineSettings, tmp_path: Path) -> None:
    env = {"ENGINE_STORAGE_ROOT": str(settings.storage_root), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "cli.mp4"
    run = subprocess.run(
        [sys.executable, "-m", "engine", "render", "--text", "Hello from the command line.", "--avatar",
         "astronaut-photo", "--out", str(out), "--json"], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=300)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["video"] == str(out) and data["fps"] == 25.0 and data["width"] == 512
    assert set(data["timings"]) >= {"tts", "avatar", "lipsync", "encode", "total"}
    ev = subprocess.run([sys.executable, "-m", "engine", "eval", str(out), "--json"], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert set(json.loads(ev.stdout)) >= {"peak_r", "lag_frames", "ssim_above_nose"}
    voices = subprocess.run([sys.executable, "-m", "engine", "voices", "--json"], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=120)
    ids = {v["id"] for v in json.loads(voices.stdout)}
    assert {"en-us", "cmn"} <= ids


FR = ("Bonjour à tous 👋🏽 ! La documentation est sur https://exemple.fr/docs?page=2 et vous pouvez écrire à "
      "jane.doe@exemple.org, si vous avez des questions.")


def test_cli_french_render_says_the_language_and_keeps_addresses_whole(settings: EngineSettings,
                                                                       tmp_path: Path) -> None:
    """Issue 12 §7 as a user meets it: the notes the CLI prints, and the subtitle files beside the video."""
    env = {"ENGINE_STORAGE_ROOT": str(settings.storage_root), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "fr.mp4"
    run = subprocess.run(
        [sys.executable, "-m", "engine", "render", "--text", FR, "--voice", "en-us", "--avatar", "astronaut-photo",
         "--out", str(out), "--subtitles"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stdout.splitlines() if line.startswith("note: ")]
    assert notes[:2] == [
        "note: auto-detected language: French (fr)",
        "note: voice 'en-us' speaks en-us, but the text is in French (fr): it will sound foreign; choose a voice "
        "that speaks fr (`python -m engine voices` or GET /v1/voices), or leave voice empty"]
    for captions in (out.with_suffix(".srt"), out.with_suffix(".vtt")):
        text = captions.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines()
                 if line and line != "WEBVTT" and "-->" not in line and not line.isdigit()]
        assert lines[0] == "Bonjour à tous !", text
        assert any("https://exemple.fr/docs?page=2" in line for line in lines), text
        assert any("jane.doe@exemple.org," in line for line in lines), text
        assert not any(ord(ch) >= 0x1F000 for ch in text)


def test_burned_in_subtitles_draw_into_the_bottom_of_the_picture(engine: Engine, tmp_path: Path) -> None:
    plain, burned = tmp_path / "plain.mp4", tmp_path / "burned.mp4"
    engine.render(RenderRequest(avatar="astronaut-photo", out=plain, text=ZH))
    result = engine.render(RenderRequest(avatar="astronaut-photo", out=burned, text=ZH, burn_subtitles=True))
    assert result.subtitles_srt is None and not burned.with_suffix(".srt").exists()
    a = [f.astype(np.int16) for f in read_frames(plain, 512, 512)]
    b = [f.astype(np.int16) for f in read_frames(burned, 512, 512)]
    middle = len(a) // 2
    bottom = np.abs(a[middle][-90:] - b[middle][-90:]).mean()
    top = np.abs(a[middle][:300] - b[middle][:300]).mean()
    assert bottom > 4 * top + 1.0, (bottom, top)


def test_text_through_an_openai_compatible_server_and_piper(settings: EngineSettings, tmp_path: Path) -> None:
    """Backends without usable timings drive the mouth from the sound; the sync check still holds."""
    from tests.standins.tts_servers import OpenAITTSServer

    with OpenAITTSServer(api_key="sk-render-test") as server:
        remote = Engine(EngineSettings(storage_root=settings.storage_root, tts_backend="openai",
                                       openai_tts_url=server.url, openai_tts_key="sk-render-test"))
        out = tmp_path / "openai.mp4"
        result = remote.render(RenderRequest(avatar="astronaut", out=out, text=EN))
    assert result.tts == "openai"
    assert_playable(out, result.speech_s + settings.lead_in_s + settings.lead_out_s)
    report = evaluate(out, settings)
    assert report.peak_r >= 0.6 and abs(report.lag_frames) <= 1, report

    out = tmp_path / "piper.mp4"
    result = Engine(settings).render(RenderRequest(avatar="astronaut-photo", out=out, text=EN, tts="piper"))
    assert result.tts == "piper"
    assert_playable(out, result.speech_s + settings.lead_in_s + settings.lead_out_s)


def test_kept_mouth_crops_match_the_template_frames(engine: Engine, storage: Path) -> None:
    from engine.frames import crop

    avatar = engine.avatars.get("astronaut")
    template = engine.avatars.template(avatar)
    assert template.mouth_crops is not None and len(template.mouth_crops) == avatar.n_frames
    frames = list(read_frames(template.video_path, avatar.width, avatar.height, pix_fmt="yuv420p"))
    for k in (0, 57, avatar.n_frames - 1):
        expected = crop(frames[k], avatar.width, avatar.height, template.mouth_box)
        np.testing.assert_array_equal(template.mouth_crops[k], expected)


def test_a_two_frame_template_still_renders(tmp_path: Path, short_clip: Path) -> None:
    tiny = tmp_path / "tiny.mp4"
    ffmpeg("-i", str(short_clip), "-frames:v", "2", "-c:v", "libx264", str(tiny))
    out = tmp_path / "out.mp4"
    result = Engine(EngineSettings(storage_root=tmp_path / "s")).render(
        RenderRequest(avatar=str(tiny), out=out, text="Hello there."))
    assert_playable(out, result.duration_s)
