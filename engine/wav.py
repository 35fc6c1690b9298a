"""Writing mono 16-bit PCM WAV files.

Its own module so that code which only writes a WAV (the template's silent track, imported by the
bridge API through the avatar store) does not import the audio analysis stack (scipy.signal, about
1 s, and librosa, left out of the API image).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())
    return path
