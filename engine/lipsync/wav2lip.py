"""Wav2Lip renderer: the published inference recipe, streamed, with a feathered paste-back.

Faithful where the model's training distribution depends on it (mel front-end, 80×16 windows
starting at each frame's time, detector-like face box with 10 px chin pad, 5-frame forward box
smoothing, masked ⊕ reference input, BGR). Changed where the original is a product defect:
exactly ``n_frames`` frames come out (the original drops the tail), and the 96×96 prediction is
blended in through a soft lower-face mask instead of hard-pasting the whole box, because the
generator re-synthesises the entire crop at 96 px: a hard paste blurs the eyes and leaves a visible
rectangle wherever the low-resolution crop meets the sharp frame. Only the lower half of the
crop carries new information (the upper half is the reference reproduced), so nothing is lost.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator

import cv2
import numpy as np
import torch

from ..audio import wav2lip_mel
from ..errors import BackendUnavailable, MissingWeights
from ..frames import Region, from_bgr, to_bgr
from ..settings import EngineSettings
from .base import RenderContext, Renderer
from .wav2lip_model import CHECKPOINT_HINT, FIELD, Wav2Lip, load_checkpoint

log = logging.getLogger(__name__)

IMG_SIZE = 96
MEL_STEP = 16
MEL_FPS = 80.0
SMOOTH_T = 5
PADS = (0, 10, 0, 0)  # top, bottom, left, right, as in the published --pads default
FOREHEAD = 0.25  # S3FD boxes reach roughly this fraction of the brow-to-chin height above the brows


def resolve_device(setting: str) -> torch.device:
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "cuda":
        raise BackendUnavailable("ENGINE_DEVICE=cuda but torch sees no CUDA device", field="device")
    return torch.device("cpu")


def mel_starts(n_mel: int, fps: float, n_frames: int) -> np.ndarray:
    """Start column of frame ``i``'s window: ``int(i*80/fps)``, clamped so the window fits."""
    starts = np.array([int(i * MEL_FPS / fps) for i in range(n_frames)], dtype=np.int64)
    return np.minimum(starts, max(n_mel - MEL_STEP, 0))


def mel_windows(mel: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames, 80, 16): one window per output frame, none dropped (audio shorter than 0.2 s is
    padded with the silence level)."""
    if mel.shape[1] < MEL_STEP:
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), constant_values=-4.0)
    windows = [mel[:, s:s + MEL_STEP] for s in mel_starts(mel.shape[1], fps, n_frames)]
    return np.stack(windows) if windows else np.zeros((0, mel.shape[0], MEL_STEP), np.float32)


def face_box(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(x1, y1, x2, y2) like an S3FD detection plus the published pads, clamped to the frame.

    68-point landmarks stop at the brows; the detector box the model was trained on also covers
    the lower forehead, so the box is extended upward by ``FOREHEAD`` of the landmark height.
    """
    x1, y1 = landmarks.min(axis=0)
    x2, y2 = landmarks.max(axis=0)
    y1 -= FOREHEAD * (y2 - y1)
    top, bottom, left, right = PADS
    return np.array([max(0.0, x1 - left), max(0.0, y1 - top), min(float(width), x2 + right),
                     min(float(height), y2 + bottom)], dtype=np.float64)


def smooth_window(i: int, n: int, t: int = SMOOTH_T) -> slice:
    """Forward-looking window of frame ``i`` among ``n``; the last frames share the final ``t``."""
    start = max(0, min(i, n - t))
    return slice(start, min(start + t, n))


def smooth_boxes(boxes: np.ndarray, t: int = SMOOTH_T) -> np.ndarray:
    """Mean over each frame's forward window, as the published inference does."""
    n = len(boxes)
    return np.stack([boxes[smooth_window(i, n, t)].mean(axis=0) for i in range(n)]) if n else boxes


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    u = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return u * u * (3 - 2 * u)


def paste_mask(size: int = 128) -> np.ndarray:
    """Blend weight over the box in unit coordinates: 0 on the upper face, 1 on mouth and jaw,
    fading to 0 at the sides and the bottom so no box edge is ever visible."""
    v = (np.arange(size) + 0.5) / size
    rows = _ramp(v, 0.42, 0.6) * (1.0 - _ramp(v, 0.93, 1.0))
    cols = _ramp(v, 0.0, 0.12) * (1.0 - _ramp(v, 0.88, 1.0))
    return np.outer(rows, cols).astype(np.float32)


def paste(frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray) -> None:
    """Blend the 96×96 BGR prediction into ``frame`` (in place) over ``box``."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    up = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    region = frame[y1:y2, x1:x2].astype(np.float32)
    frame[y1:y2, x1:x2] = np.clip(region + m * (up - region) + 0.5, 0, 255).astype(np.uint8)


class Wav2LipRenderer(Renderer):
    """The official Wav2Lip generator, loaded once and kept resident on the chosen device."""

    name = "wav2lip"

    def __init__(self, settings: EngineSettings) -> None:
        if settings.wav2lip_checkpoint is None:
            raise MissingWeights(f"No Wav2Lip checkpoint configured. {CHECKPOINT_HINT}", field=FIELD)
        self.device = resolve_device(settings.device)
        self.batch_size = settings.wav2lip_batch_size
        self.model = load_checkpoint(settings.wav2lip_checkpoint, self.device)
        self.mask = paste_mask()
        log.info("wav2lip: loaded %s on %s", settings.wav2lip_checkpoint, self.device)

    def frames(self, ctx: RenderContext, region: Region | None = None) -> Iterator[np.ndarray]:
        n = ctx.n_frames
        mels = mel_windows(wav2lip_mel(ctx.speech.samples, ctx.speech.sample_rate), ctx.fps, n)
        pending: dict[int, np.ndarray] = {}
        boxes: list[np.ndarray] = []
        done = 0
        for frame, landmarks in itertools.islice(ctx.template.frames(n, ctx.workdir), n):
            frame = to_bgr(frame)  # a fresh, writable BGR copy of the I420 template frame
            pending[len(boxes)] = frame
            boxes.append(face_box(landmarks, frame.shape[1], frame.shape[0]))
            # A batch may go once every box in its frames' smoothing windows has arrived.
            while len(boxes) - done >= self.batch_size and \
                    smooth_window(done + self.batch_size - 1, n).stop <= len(boxes):
                yield from self._emit(pending, boxes, mels[done:done + self.batch_size], done, n)
                done += self.batch_size
                ctx.progress("lipsync", done / n)
        while done < len(boxes):
            end = min(done + self.batch_size, len(boxes))
            yield from self._emit(pending, boxes, mels[done:end], done, n)
            done = end
            ctx.progress("lipsync", done / n)

    def _emit(self, pending: dict[int, np.ndarray], boxes: list[np.ndarray], mels: np.ndarray,
              start: int, n: int) -> Iterator[np.ndarray]:
        """Render frames ``start..start+len(mels)``, releasing them from ``pending``."""
        idx = range(start, start + len(mels))
        crops, rects = [], []
        for i in idx:
            h, w = pending[i].shape[:2]
            x1, y1, x2, y2 = np.round(np.mean(boxes[smooth_window(i, n)], axis=0)).astype(int)
            x1, y1 = min(x1, w - 2), min(y1, h - 2)  # never an empty crop, even for a face at the edge
            rect = (x1, y1, max(x2, x1 + 2), max(y2, y1 + 2))
            rects.append(rect)
            crops.append(cv2.resize(pending[i][rect[1]:rect[3], rect[0]:rect[2]], (IMG_SIZE, IMG_SIZE)))
        preds = self._predict(np.stack(crops), mels)
        for i, pred, rect in zip(idx, preds, rects, strict=True):
            out = pending.pop(i)
            paste(out, pred, rect, self.mask)
            yield from_bgr(out)

    def _predict(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """(B,96,96,3) uint8 BGR crops + (B,80,16) mels → (B,96,96,3) uint8 BGR faces."""
        masked = crops.copy()
        masked[:, IMG_SIZE // 2:] = 0
        face = np.concatenate([masked, crops], axis=3).astype(np.float32) / 255.0
        face_t = torch.from_numpy(face).permute(0, 3, 1, 2).to(self.device)
        mel_t = torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32))[:, None].to(self.device)
        with torch.inference_mode():
            pred = self.model(mel_t, face_t)
        return (pred.permute(0, 2, 3, 1).float().cpu().numpy() * 255.0).astype(np.uint8)


def generator_fps(batch_size: int = 16, batches: int = 3, device: str = "cpu") -> float:
    """Frames per second of the generator alone (random weights, one warm-up batch excluded)."""
    dev = torch.device(device)
    model = Wav2Lip().to(dev).eval()
    mel = torch.randn(batch_size, 1, 80, MEL_STEP, device=dev)
    face = torch.rand(batch_size, 6, IMG_SIZE, IMG_SIZE, device=dev)
    with torch.inference_mode():
        model(mel, face)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(batches):
            model(mel, face)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return batch_size * batches / elapsed
