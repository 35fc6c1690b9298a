"""Audio: decoding any input through ffmpeg, padding, WAV output, and per-frame speech features.

The Wav2Lip mel front-end uses the published hyper-parameters so official checkpoints see
the features they were trained on.
"""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
from scipy import signal

from .errors import CorruptMedia
from .video import ffmpeg_exe

WAV2LIP_SR = 16000


def decode_audio(path: Path, sample_rate: int = 48000) -> np.ndarray:
    """Any format ffmpeg reads → mono float32 at ``sample_rate``."""
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
           "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    out = subprocess.run(cmd, capture_output=True, timeout=300, check=False)
    if out.returncode != 0:
        lines = out.stderr.decode(errors="replace").strip().splitlines()
        raise CorruptMedia(f"{path.name} could not be decoded ({lines[-1] if lines else out.returncode})",
                           field="audio")
    samples = np.frombuffer(out.stdout, np.float32).copy()
    if samples.size == 0:
        raise CorruptMedia(f"{path.name} contains no audio samples", field="audio")
    return samples


def resample(samples: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    if sr_from == sr_to:
        return samples.astype(np.float32, copy=False)
    return librosa.resample(samples.astype(np.float32), orig_sr=sr_from, target_sr=sr_to).astype(np.float32)


def pad(samples: np.ndarray, sample_rate: int, lead_in_s: float, total_s: float) -> np.ndarray:
    """Silence in front, then silence (or a cut) so the clip lasts exactly ``total_s``."""
    head = np.zeros(round(lead_in_s * sample_rate), np.float32)
    body = np.concatenate([head, samples.astype(np.float32)])
    total = round(total_s * sample_rate)
    if len(body) >= total:
        return body[:total]
    return np.concatenate([body, np.zeros(total - len(body), np.float32)])


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return path


def _frame_rms(samples: np.ndarray, sr: int, fps: float, n_frames: int, win_s: float) -> np.ndarray:
    """RMS in a window centred on each video frame's time."""
    half = max(1, int(win_s * sr / 2))
    padded = np.pad(samples.astype(np.float64), (half, half))
    csum = np.concatenate([[0.0], np.cumsum(padded**2)])
    centers = (np.arange(n_frames) / fps * sr).astype(np.int64) + half
    lo = np.clip(centers - half, 0, len(padded))
    hi = np.clip(centers + half, 0, len(padded))
    return np.sqrt((csum[hi] - csum[lo]) / np.maximum(hi - lo, 1))


def _band(samples: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    sos = signal.butter(4, [lo, min(hi, sr / 2 - 1)], btype="bandpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, samples.astype(np.float64))


def _to_unit(db: np.ndarray, floor_db: float = -45.0) -> np.ndarray:
    """dB → 0..1 relative to the loud end of the clip, with a noise gate ``floor_db`` below it."""
    top = np.percentile(db, 95) if db.size else 0.0
    return np.clip((db - (top + floor_db)) / -floor_db, 0.0, 1.0)


def speech_envelope(samples: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    """Loudness of the speech band (300–3000 Hz) per video frame, 0..1."""
    rms = _frame_rms(_band(samples, sr, 300.0, 3000.0), sr, fps, n_frames, win_s=1.0 / fps)
    return _to_unit(20 * np.log10(rms + 1e-9))


@dataclass(frozen=True)
class MouthFeatures:
    """Per-frame targets derived from sound alone (used when there are no phoneme timings)."""

    openness: np.ndarray  # 0..1
    spread: np.ndarray  # -1 (rounded, low F2) .. +1 (spread, high F2)


def mouth_features(samples: np.ndarray, sr: int, fps: float, n_frames: int) -> MouthFeatures:
    """Jaw opening from the speech-band envelope; lip spread from the balance of F2 vs F1 bands."""
    env = speech_envelope(samples, sr, fps, n_frames)
    win = 1.0 / fps
    low = _frame_rms(_band(samples, sr, 250.0, 900.0), sr, fps, n_frames, win)
    high = _frame_rms(_band(samples, sr, 1500.0, 3500.0), sr, fps, n_frames, win)
    ratio = 20 * np.log10((high + 1e-9) / (low + 1e-9))
    voiced = env > 0.15
    center = float(np.median(ratio[voiced])) if voiced.any() else 0.0
    spread = np.clip((ratio - center) / 12.0, -1.0, 1.0) * voiced
    return MouthFeatures(openness=env.astype(np.float32), spread=spread.astype(np.float32))


def wav2lip_mel(samples: np.ndarray, sr: int) -> np.ndarray:
    """(80, T) log-mel at 80 frames/s, normalised to ±4 exactly as Wav2Lip's ``audio.py`` does."""
    wav = resample(samples, sr, WAV2LIP_SR)
    emphasised = signal.lfilter([1.0, -0.97], [1.0], wav)
    spec = np.abs(librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800))
    basis = librosa.filters.mel(sr=WAV2LIP_SR, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    mel_db = 20 * np.log10(np.maximum(1e-5, basis @ spec)) - 20
    return np.clip(8 * ((mel_db + 100) / 100) - 4, -4, 4).astype(np.float32)
