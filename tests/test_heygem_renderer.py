"""The HeyGem renderer against a stand-in of HeyGem's video service (no GPU, no Docker)."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from engine.audio import write_wav
from engine.errors import BackendFailed, BackendUnavailable
from engine.face.base import FaceTrack
from engine.frames import to_bgr
from engine.lipsync.base import RenderContext
from engine.lipsync.heygem import HeyGemRenderer, locate_result
from engine.settings import EngineSettings
from engine.template import Template
from engine.tts.base import Speech
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
    return path


def make_ctx(tmp_path: Path, template_video: Path, url: str | None, data_dir: Path | None,
             timeout_s: float = 30.0, progress: list[float] | None = None) -> RenderContext:
    track = FaceTrack(boxes=np.zeros((N, 4)), landmarks=np.zeros((N, 68, 2)), width=W, height=H, fps=FPS)
    template = Template(kind="video", fps=FPS, width=W, height=H, track=track,
                        video_path=template_video, reverse_path=template_video)
    t = np.arange(16000) / 16000.0
    speech = Speech(samples=(0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sample_rate=16000)
    audio = write_wav(tmp_path / "speech.wav", speech.samples, speech.sample_rate)
    settings = EngineSettings(heygem_url=url, heygem_data_dir=data_dir, heygem_poll_s=0.02,
                              heygem_timeout_s=timeout_s, http_timeout_s=5.0)
    seen = progress if progress is not None else []
    return RenderContext(template=template, speech=speech, audio_path=audio, fps=FPS, n_frames=N,
                         settings=settings, workdir=tmp_path, progress=lambda _stage, f: seen.append(f))


def render(ctx: RenderContext) -> list[np.ndarray]:
    return list(HeyGemRenderer().frames(ctx))


def test_success_yields_heygem_frames_and_sends_documented_fields(
        tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    progress: list[float] = []
    with HeyGemVideoStandIn(data_dir) as heygem:
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir, progress=progress))
    assert len(frames) == N
    assert all(f.shape == (H * 3 // 2, W) and f.dtype == np.uint8 for f in frames)
    lower = to_bgr(frames[N // 2])[H * 3 // 4:, :, :].reshape(-1, 3).mean(axis=0)
    assert lower[2] > 200 and lower[0] < 60, "expected the stand-in's red lower third"
    (submit,) = heygem.submits()
    body = submit.body
    assert set(body) == {"audio_url", "video_url", "code", "chaofen", "watermark_switch", "pn"}
    assert uuid.UUID(body["code"])
    assert (body["chaofen"], body["watermark_switch"], body["pn"]) == (0, 0, 1)
    for key, ext in (("audio_url", ".wav"), ("video_url", ".mp4")):
        assert "/" not in body[key] and body[key].endswith(ext)
    queries = [r for r in heygem.requests if r.path == "/easy/query"]
    assert queries and all(q.query == {"code": body["code"]} for q in queries)
    assert any(0 < p < 1 for p in progress) and progress[-1] == 1.0
    assert list(data_dir.iterdir()) == []


def test_busy_then_success(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, busy_submits=2) as heygem:
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert len(frames) == N
    assert len(heygem.submits()) == 3
    assert len({s.body["code"] for s in heygem.submits()}) == 1


def test_short_result_is_padded_with_the_last_frame(
        tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, drop_frames=3) as heygem:
        frames = render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert len(frames) == N
    assert np.array_equal(frames[-1], frames[-2])


def test_failure_carries_heygem_message(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, fail_msg="人脸检测失败") as heygem, \
            pytest.raises(BackendFailed, match="人脸检测失败"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert list(data_dir.iterdir()) == []


def test_never_finishing_times_out(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, never_finish=True) as heygem, \
            pytest.raises(BackendFailed, match=r"did not finish within 0\.3 s"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir, timeout_s=0.3))
    assert list(data_dir.iterdir()) == []


def test_server_down_names_the_url(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(BackendUnavailable, match=url):
        render(make_ctx(tmp_path, template_video, url, data_dir))
    assert list(data_dir.iterdir()) == []


def test_missing_settings_name_the_variable(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with pytest.raises(BackendUnavailable, match="ENGINE_HEYGEM_URL"):
        render(make_ctx(tmp_path, template_video, None, data_dir))
    with pytest.raises(BackendUnavailable, match="ENGINE_HEYGEM_DATA_DIR"):
        render(make_ctx(tmp_path, template_video, "http://127.0.0.1:1", None))


def test_malicious_result_path_is_refused(tmp_path: Path, template_video: Path, data_dir: Path) -> None:
    with HeyGemVideoStandIn(data_dir, result="../../etc/passwd") as heygem, \
            pytest.raises(BackendFailed, match="unexpected result"):
        render(make_ctx(tmp_path, template_video, heygem.url, data_dir))
    assert list(data_dir.iterdir()) == []


def test_result_symlink_leaving_the_data_dir_is_refused(tmp_path: Path, data_dir: Path) -> None:
    code = str(uuid.uuid4())
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (data_dir / f"{code}-r.mp4").symlink_to(outside)
    with pytest.raises(BackendFailed, match="outside"):
        locate_result(data_dir, code, f"/code/data/temp/{code}-r.mp4")
    (data_dir / f"{code}-r.mp4").unlink()
    real = data_dir / f"{code}-r.mp4"
    real.write_bytes(b"x")
    assert locate_result(data_dir, code, f"/code/data/temp/{code}-r.mp4") == real.resolve()
    assert locate_result(data_dir, code, "") == real.resolve()
