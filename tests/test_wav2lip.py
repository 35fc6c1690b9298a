"""Wav2Lip: checkpoint-compatible generator, checkpoint loading, windowing and the streamed renderer.

No official weights are needed: checkpoints with the official structure are built from the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.audio import wav2lip_mel
from engine.errors import MissingWeights
from engine.face.base import FaceTrack
from engine.frames import from_bgr, to_bgr
from engine.lipsync.base import RenderContext
from engine.lipsync.wav2lip import (
    SMOOTH_T,
    Wav2LipRenderer,
    face_box,
    mel_starts,
    mel_windows,
    smooth_boxes,
)
from engine.lipsync.wav2lip_model import InvalidCheckpoint, Wav2Lip, load_checkpoint
from engine.settings import EngineSettings
from engine.template import Template
from engine.tts.base import Speech

torch.set_num_threads(2)


def _official(state: dict[str, torch.Tensor]) -> dict:
    """The layout ``wav2lip_train.save_checkpoint`` writes (DataParallel prefix included)."""
    return {"state_dict": {"module." + k: v for k, v in state.items()}, "optimizer": {},
            "global_step": 0, "global_epoch": 0}


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Wav2Lip()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-default stats, so a failed load shows
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.9, 1.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, random_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path_factory.mktemp("w2l") / "wav2lip.pth"
    torch.save(_official(random_state), path)
    return path


def test_module_matches_the_published_layout() -> None:
    model = Wav2Lip()
    state = model.state_dict()
    assert len(state) == 352
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 36.3) < 0.05
    for key in ("face_encoder_blocks.0.0.conv_block.0.weight", "audio_encoder.0.conv_block.1.running_mean",
                "face_decoder_blocks.6.0.conv_block.0.weight", "output_block.1.weight"):
        assert key in state
    with torch.inference_mode():
        out = model.eval()(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_load_official_structure(checkpoint: Path, random_state: dict[str, torch.Tensor]) -> None:
    model = load_checkpoint(checkpoint, "cpu")
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == random_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in random_state.items())


def test_load_bare_state_dict(tmp_path: Path, random_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "bare.pth"
    torch.save(random_state, path)
    loaded = load_checkpoint(path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_state.items())


@pytest.mark.parametrize("defect", ["renamed", "shape"])
def test_wrong_structure_is_a_clear_error(tmp_path: Path, random_state: dict[str, torch.Tensor],
                                          defect: str) -> None:
    state = dict(random_state)
    key = "output_block.1.weight"
    if defect == "renamed":
        state["output_block.2.weight"] = state.pop(key)
    else:
        state[key] = torch.zeros(3, 16, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(_official(state), path)
    with pytest.raises(InvalidCheckpoint) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert key in message
    assert ("output_block.2.weight" in message) if defect == "renamed" else ("(3, 32, 1, 1)" in message)
    assert "ENGINE_WAV2LIP_CHECKPOINT" in message


def test_missing_or_unreadable_file_tells_how_to_supply_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeights, match="ENGINE_WAV2LIP_CHECKPOINT"):
        load_checkpoint(tmp_path / "wav2lip.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidCheckpoint, match="ENGINE_WAV2LIP_CHECKPOINT"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(MissingWeights, match="not redistributable"):
        Wav2LipRenderer(EngineSettings(wav2lip_checkpoint=None))


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97])
def test_one_mel_window_per_frame(fps: float) -> None:
    mel = wav2lip_mel(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    n_frames = round(1.2 * fps)  # longer than the audio: the tail windows clamp, none are dropped
    windows = mel_windows(mel, fps, n_frames)
    assert windows.shape == (n_frames, 80, 16)
    last = mel.shape[1] - 16
    for i, start in enumerate(mel_starts(mel.shape[1], fps, n_frames)):
        assert start == min(int(i * 80 / fps), last)
        np.testing.assert_array_equal(windows[i], mel[:, start:start + 16])
    assert mel_windows(mel[:, :5], fps, 3).shape == (3, 80, 16)


def test_box_smoothing_is_forward_looking() -> None:
    boxes = np.arange(8, dtype=np.float64)[:, None].repeat(4, axis=1)
    smooth = smooth_boxes(boxes)
    assert smooth[0, 0] == np.mean(range(0, SMOOTH_T))
    assert smooth[-1, 0] == smooth[-4, 0] == np.mean(range(8 - SMOOTH_T, 8))


def _landmarks(cx: float, cy: float, size: float) -> np.ndarray:
    """A hand-placed 68-point iBUG layout (brows at -0.3, chin at +0.5 of ``size``)."""
    t = np.linspace(0, np.pi, 17)
    jaw = np.stack([-0.45 * np.cos(t), -0.1 + 0.6 * np.sin(t)], 1)
    brows = [[x, -0.3] for x in np.r_[np.linspace(-0.38, -0.08, 5), np.linspace(0.08, 0.38, 5)]]
    nose = [[0, y] for y in np.linspace(-0.2, 0.1, 4)] + [[x, 0.15] for x in np.linspace(-0.1, 0.1, 5)]

    def ring(x: float, y: float, rx: float, ry: float, k: int) -> np.ndarray:
        a = np.linspace(np.pi, 3 * np.pi, k, endpoint=False)
        return np.stack([x + rx * np.cos(a), y + ry * np.sin(a)], 1)

    eyes = [ring(-0.22, -0.15, 0.08, 0.03, 6), ring(0.22, -0.15, 0.08, 0.03, 6)]
    lips = [ring(0, 0.3, 0.18, 0.07, 12), ring(0, 0.3, 0.12, 0.03, 8)]
    pts = np.concatenate([jaw, brows, nose, *eyes, *lips])
    return (pts * size + [cx, cy]).astype(np.float32)


class _StillTemplate(Template):
    """A still I420 frame whose landmarks drift a little, handed out as read-only views like decoded video."""

    pulled = 0

    def frames(self, count: int, workdir: Path | None = None, region=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        assert self.image is not None
        i420 = from_bgr(self.image)
        for i in range(count):
            self.pulled += 1
            view = i420.view()
            view.flags.writeable = False
            yield view, self.track.landmarks[0] + [0.0, (i % 3) - 1.0]


def test_renderer_streams_exactly_n_frames(tmp_path: Path, checkpoint: Path) -> None:
    h, w, n = 144, 176, 25
    image = np.full((h, w, 3), (40, 90, 60), np.uint8)
    image[:] += np.random.default_rng(1).integers(0, 20, (h, w, 3), dtype=np.uint8)
    cv2.ellipse(image, (88, 70), (36, 48), 0, 0, 360, (90, 140, 200), -1)
    cv2.ellipse(image, (88, 94), (13, 5), 0, 0, 360, (40, 40, 120), -1)
    lm = _landmarks(88, 70, 80)
    track = FaceTrack(boxes=np.array([[48, 38, 128, 110]], np.float32), landmarks=lm[None],
                      width=w, height=h, fps=25)
    template = _StillTemplate(kind="photo", fps=25.0, width=w, height=h, track=track, image=image)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
    reports: list[tuple[str, float]] = []
    settings = EngineSettings(wav2lip_checkpoint=checkpoint, wav2lip_batch_size=8, device="cpu")
    renderer = Wav2LipRenderer(settings)
    ctx = RenderContext(template=template, speech=Speech(tone, 16000), audio_path=tmp_path / "a.wav",
                        fps=25.0, n_frames=n, settings=settings, workdir=tmp_path,
                        progress=lambda stage, f: reports.append((stage, f)))
    out = []
    for frame in renderer.frames(ctx):
        if not out:  # streaming: one batch plus the smoothing look-ahead, not the whole template
            assert template.pulled <= 8 + SMOOTH_T - 1
        out.append(frame)

    assert len(out) == n
    boxes = np.stack([face_box(lmk, w, h) for _, lmk in _StillTemplate.frames(template, n, tmp_path)])
    x1, y1 = np.floor(boxes[:, :2].min(0)).astype(int) - 1
    x2, y2 = np.ceil(boxes[:, 2:].max(0)).astype(int) + 1
    outside = np.ones((h, w), bool)
    outside[y1:y2, x1:x2] = False
    luma = from_bgr(image)[:h]
    for frame in out:
        assert frame.shape == (h * 3 // 2, w) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame[:h][outside], luma[outside])
        bgr = to_bgr(frame)
        assert np.abs(bgr[86:100, 74:102].astype(int) - image[86:100, 74:102]).mean() > 5
    assert {stage for stage, _ in reports} == {"lipsync"}
    fractions = [f for _, f in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
