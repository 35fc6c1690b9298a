"""Audio bytes from a TTS server to mono float32 samples.

Servers answer in whatever format they like (WAV with odd headers, MP3, FLAC, Opus), so anything
that is not plain PCM WAV goes through the ffmpeg binary shipped in ``imageio-ffmpeg``, over pipes
so no temp files pile up.
"""

from __future__ import annotations

import io
import re
import subprocess
import wave

import numpy as np

from ..errors import BackendUnavailable, CorruptMedia
from ..media import plain_reason

_RATE = re.compile(rb"Audio: [^\n]*?(\d+) Hz")
_FFMPEG_TIMEOUT_S = 120.0


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Return ``(samples, sample_rate)``: mono float32 in -1..1. Raise ``CorruptMedia`` if it is not audio."""
    if not data:
        raise CorruptMedia("the audio is empty")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            return _decode_pcm_wav(data)
        except (wave.Error, EOFError, ValueError):
            pass  # float/extensible/24-bit WAV: ffmpeg reads those
    return _decode_ffmpeg(data)


def _decode_pcm_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes or channels < 1 or rate <= 0:
        raise ValueError(f"unsupported WAV layout ({width} bytes x {channels} channels)")
    usable = len(raw) - len(raw) % (width * channels)
    ints = np.frombuffer(raw[:usable], dtype=dtypes[width]).astype(np.float32)
    if width == 1:
        ints -= 128.0
    samples = ints / float(2 ** (8 * width - 1))
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if samples.size == 0:
        raise ValueError("WAV has no samples")
    return np.ascontiguousarray(samples, dtype=np.float32), rate


def _decode_ffmpeg(data: bytes) -> tuple[np.ndarray, int]:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise BackendUnavailable(f"cannot decode audio: the ffmpeg binary is missing ({exc})") from exc
    # rematrix_maxval 1 makes the mono downmix a plain mean (ffmpeg's default gives stereo +3 dB).
    cmd = [exe, "-hide_banner", "-i", "pipe:0", "-map", "0:a:0", "-rematrix_maxval", "1.0", "-ac", "1",
           "-c:a", "pcm_f32le", "-f", "f32le", "pipe:1"]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CorruptMedia("decoding the audio took too long") from exc
    rates = _RATE.findall(proc.stderr)
    samples = np.frombuffer(proc.stdout[: len(proc.stdout) - len(proc.stdout) % 4], dtype="<f4")
    if proc.returncode != 0 or not rates or samples.size == 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise CorruptMedia(f"not decodable audio ({plain_reason(tail[0])})")  # no heap address or server path
    # The last "Audio: ... Hz" line is the output stream, i.e. the rate of the samples we got.
    return np.clip(samples.astype(np.float32), -1.0, 1.0), int(rates[-1])
