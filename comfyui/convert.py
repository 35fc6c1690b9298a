"""ComfyUI's tensors ↔ the engine's numpy arrays and files.

ComfyUI passes ``IMAGE`` as float ``[B, H, W, C]`` RGB in 0–1 and ``AUDIO`` as ``{"waveform": [B, C, T],
"sample_rate": int}``; the engine works on uint8 BGR frames, mono float32 samples and files on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import soundfile
import torch


def audio_dict(samples: np.ndarray, sample_rate: int) -> dict:
    """Mono samples → ComfyUI ``AUDIO`` (batch 1, one channel)."""
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).reshape(1, 1, -1)
    return {"waveform": waveform, "sample_rate": int(sample_rate)}


def mono(audio: dict) -> tuple[np.ndarray, int]:
    """The first item of an ``AUDIO`` batch, its channels averaged: the engine lip-syncs one voice."""
    waveform = audio["waveform"]
    if waveform.ndim != 3 or waveform.shape[-1] == 0:
        raise ValueError(f"AUDIO waveform must be [batch, channels, samples], got {tuple(waveform.shape)}")
    samples = waveform[0].float().mean(dim=0).cpu().numpy()
    return samples.astype(np.float32), int(audio["sample_rate"])


def write_wav(audio: dict, path: Path) -> Path:
    samples, rate = mono(audio)
    soundfile.write(str(path), np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16")
    return path


def to_bgr(images: torch.Tensor) -> list[np.ndarray]:
    """``IMAGE`` batch → uint8 BGR frames (alpha, if any, dropped)."""
    rgb = (images[..., :3].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return [np.ascontiguousarray(frame[..., ::-1]) for frame in rgb]


def from_rgb(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 RGB frames → ``IMAGE`` batch."""
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def content_hash(images: torch.Tensor) -> str:
    """A digest of the pixels themselves, so the same picture maps to the same cached avatar."""
    data = images[..., :3].contiguous().cpu().numpy()
    digest = hashlib.sha256(str(data.shape).encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def write_png(frame_bgr: np.ndarray, path: Path) -> Path:
    ok, data = cv2.imencode(".png", frame_bgr)
    if not ok:
        raise ValueError("the image could not be encoded as PNG")
    path.write_bytes(data.tobytes())
    return path
