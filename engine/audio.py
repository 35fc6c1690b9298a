"""Audio: decoding any input through ffmpeg, padding, WAV output, and per-frame speech features.

The Wav2Lip mel front-end uses the published hyper-parameters so official checkpoints see
the features they were trained on.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import librosa
import numpy as np
from scipy import signal

from .errors import CorruptMedia, MediaTooLong, UnsupportedMedia
from .media import MAX_AUDIO_CHANNELS, plain_reason, probe
from .video import ffmpeg_exe

WAV2LIP_SR = 16000
DECODE_TIMEOUT_S = 300
_KNOWN_LAYOUTS = 8
"""ffmpeg has a speaker layout (and so a standard downmix) for every channel count up to this one."""


def decode_audio(path: Path, sample_rate: int = 48000, max_s: float | None = None) -> np.ndarray:
    """Any format ffmpeg reads → mono float32 at ``sample_rate``, at most ``max_s`` seconds of it.

    With ``max_s`` the decoder stops (``-t``) just past the limit and the samples go straight into one array
    of the limit's size, so a file whose header understates its length cannot make this process decode hours
    of audio; a file longer than ``max_s`` is ``MediaTooLong`` rather than silently cut. Up to eight
    channels get ffmpeg's standard downmix for their speaker layout, scaled so it cannot clip; more
    channels (microphone arrays, multitrack recordings) have no layout, so they are averaged.
    """
    channels = probe(path).channels
    if channels > MAX_AUDIO_CHANNELS:
        raise UnsupportedMedia(f"{path.name} has {channels} audio channels; at most {MAX_AUDIO_CHANNELS} can be "
                               "mixed down to mono; export it as mono or stereo", field="audio")
    if channels > _KNOWN_LAYOUTS:
        mix = ["-af", "pan=mono|c0<" + "+".join(f"c{i}" for i in range(channels))]
    else:
        mix = ["-rematrix_maxval", "1.0", "-ac", "1"]
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", *mix,
           "-ar", str(sample_rate)]
    limit = None if max_s is None else round(max_s * sample_rate)
    if max_s is not None:
        cmd += ["-t", f"{max_s + 1:.3f}"]
    samples, code, errors = _run_decoder([*cmd, "-f", "f32le", "-"], limit)
    if limit is not None and samples.size > limit:
        raise MediaTooLong(f"{path.name} lasts longer than {max_s:g} s (decoding stopped there); the limit is "
                           f"{max_s:g} s; trim or split it", field="audio")
    if code is None:
        raise CorruptMedia(f"{path.name} took longer than {DECODE_TIMEOUT_S} s to decode; it looks damaged",
                           field="audio")
    if code != 0:
        raise CorruptMedia(f"{path.name} could not be decoded ({plain_reason(errors[0]) if errors else code})",
                           field="audio")
    if samples.size == 0:
        raise CorruptMedia(f"{path.name} contains no audio samples", field="audio")
    return samples


def _run_decoder(cmd: list[str], limit: int | None) -> tuple[np.ndarray, int | None, list[str]]:
    """Run an ffmpeg that writes f32le to stdout; keep at most ``limit`` + 1 samples (then stop it).

    Returns the samples, the exit code (None when it ran past ``DECODE_TIMEOUT_S``) and ffmpeg's first error
    lines; its error output goes to a file, so a damaged input that logs on every packet costs no memory.
    """
    expired = threading.Event()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(DECODE_TIMEOUT_S, expire)
        timer.start()
        try:
            samples = _read_all(proc.stdout) if limit is None else _read_at_most(proc.stdout, limit + 1)
        finally:
            timer.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        err.seek(0)
        errors = [line.strip() for line in err.read(1 << 16).decode(errors="replace").splitlines() if line.strip()]
    return samples, None if expired.is_set() else code, errors


def _read_at_most(stream: IO[bytes], count: int) -> np.ndarray:
    """Up to ``count`` float32 samples, read straight into one array (pages never written cost no memory)."""
    samples = np.empty(count, np.float32)
    view = memoryview(samples).cast("B")
    filled = 0
    while filled < len(view) and (got := stream.readinto(view[filled:])):  # type: ignore[attr-defined]
        filled += got
    return samples[: filled // 4]


def _read_all(stream: IO[bytes]) -> np.ndarray:
    chunks = [np.frombuffer(block, np.float32, len(block) // 4) for block in iter(lambda: stream.read(1 << 20), b"")]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


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
