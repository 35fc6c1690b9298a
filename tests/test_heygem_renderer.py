"""The HeyGem renderer against a stand-in that answers as HeyGem's video service does (no GPU, no Docker).

Waiting is event-driven: the stand-in holds or reveals on events, and our intervals are settings
set to a few hundredths of a second, so no test depends on the clock being kind.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
import requests

from engine.errors import BackendFailed, BackendStalled, BackendUnavailable
from engine.face.base import FaceTrack
from engine.frames import to_bgr
from engine.lipsync import heygem_cleanup
from engine.lipsync.base import RenderContext
from engine.lipsync.heygem import HeyGemRenderer
from engine.lipsync.heygem_client import normalize_base_url
from engine.lipsync.heygem_files import SharedFolder
from engine.lipsync.heygem_health import heygem_state
from engine.settings import EngineSettings
from engine.template import Template
from engine.tts.base import Speech
from engine.wav import write_wav
from tests.standins.heygem_video import HeyGemVideoStandIn

W, H, FPS, N = 320, 240, 25.0, 25


@pytest.fixture(scope="module")
def template_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-v", "error", "-f", "lavfi",
                    "-i", f"testsrc=size={W}x{H}:rate={FPS:g}", "-t", "1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=60)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "face2face" / "temp"
    path.mkdir(parents=True)
    (tmp_path / "face2face" / "result").mkdir()
    return path


def make_ctx(tmp_path: Path, template_video: Path, url: str | None, data_dir: Path | None,
             progress: list[float] | None = None, rate: int = 16000, **settings: Any) -> RenderContext:
    track = FaceTrack(boxes=np.zeros((N, 4)), landmarks=np.zeros((N, 68, 2)), width=W, height=H, fps=FPS)
    template = Template(kind="video", fps=FPS, width=W, height=H, track=track,
                        video_path=template_video, reverse_path=template_video)
    t = np.arange(rate) / rate
    speech = Speech(samples=(0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate=rate)
    audio = write_wav(tmp_path / "speech.wav", speech.samples, speech.sample_rate)
    values: dict[str, Any] = {"heygem_url": url, "heygem_data_dir": data_dir, "heygem_poll_s": 0.02,
                              "heygem_timeout_s": 60.0, "http_timeout_s": 5.0, **settings}
    seen = progress if progress is not None else []
    return RenderContext(template=template, speech=speech, audio_path=audio, fps=FPS, n_frames=N,
                         settings=EngineSettings(_env_file=None, **values),  # type: ignore[call-arg]
                         workdir=tmp_path, progress=lambda _stage, f: seen.append(f))


def render(ctx: RenderContext) -> list[np.ndarray]:
    return list(HeyGemRenderer().frames(ctx))


def ours(data_dir: Path) -> list[str]:
    """What is left in HeyGem's folder, our clean-up records aside."""
    return sorted(p.name for p in data_dir.iterdir() if p.name != ".talking-head")


def is_red_below(frame: np.ndarray) -> bool:
    lower = to_bgr(frame)[H * 3 // 4:, :, :].reshape(-1, 3).mean(axis=0)
    return bool(lower[2] > 200 and lower[0] < 60)


# --- 1. a stand-in that answers like HeyGem ----------------------------------------------------


def test_standin_answers_with_heygems_codes_and_forgets_a_read_result(data_dir: Path, template_video: Path,
                                                                      tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, template_video, None, None)
    (data_dir / "t.mp4").write_bytes(template_video.read_bytes())
    (data_dir / "a.wav").write_bytes(ctx.audio_path.read_bytes())
    code = str(uuid.uuid4())
    with HeyGemVideoStandIn(data_dir) as heygem:
        body = {"audio_url": "a.wav", "video_url": "t.mp4", "code": code, "chaofen": 0, "watermark_switch": 0,
                "pn": 1}
        assert requests.post(f"{heygem.url}/easy/submit", json=body, timeout=5).json() == \
            {"code": 10000, "data": {}, "msg": 10000}
        assert requests.post(f"{heygem.url}/easy/submit", json={**body, "code": "other"}, timeout=5).json()["code"] \
            == 10001
        heygem.tasks[code].ended.wait(30)
        done = requests.get(f"{heygem.url}/easy/query", params={"code": code}, timeout=5).json()
        again = requests.get(f"{heygem.url}/easy/query", params={"code": code}, timeout=5).json()
    assert done["code"] == 10000 and done["data"]["status"] == 2 and done["data"]["result"] == f"/{code}-r.mp4"
    assert again["code"] == 10004
    assert heygem.tasks[code].frames == round(1.0 * FPS) - 1  # the audio's length at 25 fps, a frame short


# --- 2. what we hand over ----------------------------------------------------------------------


def test_success_hands_over_what_heygem_expects_and_leaves_nothing(
        tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    progress: list[float] = []
    with HeyGemVideoStandIn(data_dir) as heygem:
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir, progress=progress, rate=22050))
    assert len(frames) == N and all(f.shape == (H * 3 // 2, W) and f.dtype == np.uint8 for f in frames)
    assert is_red_below(frames[N // 2]), "expected the stand-in's red lower third"
    assert np.array_equal(frames[-1], frames[-2]), "HeyGem's output is a frame short; the last one repeats"
    (submit,) = heygem.submits()
    body = submit.body
    assert set(body) == {"audio_url", "video_url", "code", "chaofen", "watermark_switch", "pn"}
    assert (body["chaofen"], body["watermark_switch"], body["pn"]) == (0, 0, 1)
    for key, ext in (("audio_url", ".wav"), ("video_url", ".mp4")):
        assert "/" not in body[key] and body[key].endswith(ext)
    task = heygem.tasks[body["code"]]
    assert task.template_has_audio is True, "HeyGem's own client always hands over a model video with sound"
    assert task.audio_rate == 44100, "espeak's 22,050 Hz is resampled to the rate of HeyGem's own TTS"
    assert [p for p in progress if 0 < p < 1] == [0.2, 0.8] and progress[-1] == 1.0
    assert ours(data_dir) == [], "inputs, <code>-r.mp4, <code>_format.*, <code>/ are all removed"


def test_newer_images_refuse_other_audio_rates(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir) as heygem, pytest.raises(BackendFailed, match="三次获取音频时长失败"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir, rate=22050, heygem_audio_rate=22050))
    assert ours(data_dir) == []


def test_container_path_style_with_a_configured_prefix(tmp_path: Path, template_video: Path,
                                                       data_dir: Path) -> None:
    prefix = "/srv/heygem/temp"
    with HeyGemVideoStandIn(data_dir, accepts="container", container_dir=prefix) as heygem:
        with pytest.raises(BackendFailed, match="文件不存在"):
            render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_path_style="container",
                                 heygem_container_dir=prefix))
    assert len(frames) == N and is_red_below(frames[N // 2])
    body = heygem.submits()[-1].body
    assert body["audio_url"].startswith(f"{prefix}/engine-") and body["video_url"].startswith(f"{prefix}/engine-")
    assert ours(data_dir) == []


def test_base_url_with_the_clients_easy_suffix(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    assert normalize_base_url("http://h:8383/easy/") == "http://h:8383"
    with HeyGemVideoStandIn(data_dir) as heygem:
        frames = render(make_ctx(tmp_path, template_video, f"{heygem.url}/easy", data_dir))
    assert len(frames) == N
    assert {r.path for r in heygem.requests} == {"/easy/submit", "/easy/query"}


# --- 3. when things go wrong -------------------------------------------------------------------


def test_busy_then_success(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, busy_submits=2) as heygem:
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert len(frames) == N
    assert len(heygem.submits()) == 3 and len({s.body["code"] for s in heygem.submits()}) == 1


def test_dropped_polls_are_retried(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, drop_queries=3) as heygem:
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert len(frames) == N and is_red_below(frames[0])
    assert ours(data_dir) == []


def test_polls_failing_past_the_retry_window_keep_the_inputs(tmp_path: Path, template_video: Path,
                                                             data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, drop_queries=1000) as heygem, \
            pytest.raises(BackendUnavailable, match="ENGINE_HEYGEM_POLL_RETRY_S"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_poll_retry_s=0.1))
    left = ours(data_dir)
    assert any(n.endswith(".wav") for n in left) and any(n.startswith("engine-") and n.endswith(".mp4") for n in left)


def test_stall_fails_with_its_own_code_names_the_fix_and_shows_in_readiness(
        tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, stall=True) as heygem:
        ctx = make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_stall_s=0.2)
        with pytest.raises(BackendStalled, match="restart the HeyGem container") as err:
            render(ctx)
        assert err.value.code == "backend_stalled" and "20%" in str(err.value)
        assert heygem_state(ctx.settings).startswith("stalled: task")
        with pytest.raises(BackendFailed, match="stayed busy"):  # every later task is refused, as in #466
            render(make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_timeout_s=0.1))
        heygem.restart()
        assert len(render(make_ctx(tmp_path, template_video, heygem.url, data_dir))) == N
        assert heygem_state(ctx.settings) == "ok"
    assert heygem_cleanup.sweep(data_dir, now=1e12) != [], "the stalled task's inputs go after the grace period"
    assert ours(data_dir) == []


def test_after_our_timeout_inputs_stay_until_heygems_result_appears(
        tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    hold = threading.Event()
    with HeyGemVideoStandIn(data_dir, hold=hold) as heygem:
        with pytest.raises(BackendFailed, match=r"did not finish within 0\.2 s"):
            render(make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_timeout_s=0.2))
        (task,) = heygem.tasks.values()
        assert len([n for n in ours(data_dir) if n.startswith("engine-")]) == 2
        assert heygem_cleanup.sweep(data_dir) == [], "HeyGem may still read them"
        hold.set()
        assert task.ended.wait(30) and task.status == 2
    assert f"{task.code}-r.mp4" in ours(data_dir) and f"{task.code}_format.wav" in ours(data_dir)
    assert heygem_cleanup.sweep(data_dir) == [task.code]
    assert ours(data_dir) == []


def test_failure_carries_heygems_message(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, fail_msg="存在多人脸") as heygem, \
            pytest.raises(BackendFailed, match="存在多人脸"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert ours(data_dir) == []


def test_result_late_on_a_network_share_is_waited_for(tmp_path: Path, template_video: Path,
                                                      data_dir: Path) -> None:
    reveal = threading.Event()

    class RevealOnWait(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "to become visible" in record.getMessage():
                reveal.set()

    handler = RevealOnWait()
    logger = logging.getLogger("engine.lipsync.heygem_files")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with HeyGemVideoStandIn(data_dir, reveal=reveal) as heygem:
            frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_result_wait_s=30))
    finally:
        logger.removeHandler(handler)
    assert len(frames) == N and reveal.is_set()
    never = threading.Event()
    with HeyGemVideoStandIn(data_dir, reveal=never) as heygem, \
            pytest.raises(BackendFailed, match=r"did not appear .* within 0\.1 s.*ENGINE_HEYGEM_RESULT_WAIT_S"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir, heygem_result_wait_s=0.1))


def test_missing_result_folder_says_what_to_create(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    (data_dir.parent / "result").rmdir()
    with pytest.raises(BackendUnavailable, match=f"mkdir -p {data_dir.parent / 'result'}"):
        render(make_ctx(tmp_path, template_video, "http://127.0.0.1:1", data_dir))


def test_folder_docker_made_as_root_says_what_to_change(tmp_path: Path, template_video: Path, data_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if os.getuid() == 0:  # root writes anywhere: refuse the probe file as the kernel would for anyone else
        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr("engine.lipsync.heygem_files.tempfile.NamedTemporaryFile", refuse)
    else:
        data_dir.chmod(0o555)
    try:
        with pytest.raises(BackendUnavailable) as err:
            render(make_ctx(tmp_path, template_video, "http://127.0.0.1:1", data_dir))
    finally:
        data_dir.chmod(0o755)
    message = str(err.value)
    assert "is not writable by this worker" in message and "PermissionError" in message
    assert f"sudo chown -R {os.getuid()}:{os.getgid()} {data_dir.parent}" in message


def test_server_down_names_the_url_and_cleans_up(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(BackendUnavailable, match=url):
        render(make_ctx(tmp_path, template_video, url, data_dir))
    assert heygem_state(make_ctx(tmp_path, template_video, url, data_dir).settings).startswith("unreachable")


def test_missing_settings_name_the_variable(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with pytest.raises(BackendUnavailable, match="ENGINE_HEYGEM_URL"):
        render(make_ctx(tmp_path, template_video, None, data_dir))
    with pytest.raises(BackendUnavailable, match="ENGINE_HEYGEM_DATA_DIR"):
        render(make_ctx(tmp_path, template_video, "http://127.0.0.1:1", None))


def test_malicious_result_path_is_refused(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, result="../../etc/passwd") as heygem, \
            pytest.raises(BackendFailed, match="unexpected result"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert ours(data_dir) == []


def test_result_symlink_leaving_the_data_dir_is_refused(tmp_path: Path, data_dir: Path) -> None:
    folder = SharedFolder(data_dir)
    code = str(uuid.uuid4())
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (data_dir / f"{code}-r.mp4").symlink_to(outside)
    with pytest.raises(BackendFailed, match="outside"):
        folder.locate_result(code, f"/{code}-r.mp4", 0)
    (data_dir / f"{code}-r.mp4").unlink()
    real = data_dir / f"{code}-r.mp4"
    real.write_bytes(b"x")
    assert folder.locate_result(code, f"/{code}-r.mp4", 0) == real.resolve()
    assert folder.locate_result(code, f"/code/data/temp/{code}-r.mp4", 0) == real.resolve()


def test_readyz_reports_heygem_without_failing(tmp_path: Path, data_dir: Path, redis_server: Any) -> None:
    from bridge.app import create_app
    from bridge.settings import BridgeSettings

    (data_dir / heygem_cleanup.PENDING_DIR).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / ".talking-head" / "stalled.json").write_text(json.dumps({"code": "c1", "progress": 20, "since": 0}))
    with HeyGemVideoStandIn(data_dir) as heygem:
        engine = EngineSettings(_env_file=None, storage_root=tmp_path / "engine", heygem_url=heygem.url,  # type: ignore[call-arg]
                                heygem_data_dir=data_dir)
        bridge = BridgeSettings(_env_file=None, storage_root=tmp_path / "bridge",  # type: ignore[call-arg]
                                redis_url=redis_server.url, min_free_bytes=0)
        reply = create_app(bridge, engine_settings=engine).test_client().get("/readyz")
    assert reply.status_code == 200
    assert reply.get_json()["checks"]["heygem"].startswith("stalled: task c1 stuck at 20%")
    assert "restart the HeyGem container" in reply.get_json()["checks"]["heygem"]
