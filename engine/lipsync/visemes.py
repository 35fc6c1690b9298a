"""Mouth-shape trajectories: from phoneme timings (TTS) or from the sound itself (uploaded audio).

A trajectory is two numbers per video frame: ``openness`` (0 closed .. 1 wide open) and
``spread`` (-1 rounded .. +1 spread). Coarticulation is a zero-phase smoothing of per-phoneme
targets; bilabials are then forced shut so /p b m/ always close the lips.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..audio import mouth_features, speech_envelope
from ..tts.base import Phoneme, Speech

REST = (0.0, 0.0)
# (openness, spread) per class; values chosen from the Preston Blair / Rhubarb mouth set.
TARGETS = {
    "closed": (0.0, 0.0),
    "labiodental": (0.08, 0.15),
    "open": (0.95, 0.1),
    "mid": (0.6, 0.3),
    "schwa": (0.42, 0.0),
    "spread": (0.32, 0.85),
    "round_mid": (0.62, -0.7),
    "round": (0.3, -1.0),
    "postalveolar": (0.22, -0.45),
    "sibilant": (0.14, 0.45),
    "consonant": (0.26, 0.1),
    "aspirate": (0.4, 0.0),
}
_VOWELS = {
    "a": "open", "ɑ": "open", "æ": "open", "ɐ": "open", "ʌ": "open", "ɒ": "round_mid", "ä": "open",
    "e": "mid", "ɛ": "mid", "ɜ": "mid", "ə": "schwa", "ɚ": "schwa", "ɤ": "schwa", "ɘ": "schwa", "ɵ": "round_mid",
    "i": "spread", "ɪ": "spread", "ɨ": "spread", "j": "spread", "ɿ": "spread", "ʅ": "spread",
    "o": "round_mid", "ɔ": "round_mid", "u": "round", "ʊ": "round", "w": "round", "y": "round",
    "ʏ": "round", "ɯ": "spread", "ø": "round_mid", "œ": "round_mid", "ɥ": "round",
}
_CONSONANTS = {
    "p": "closed", "b": "closed", "m": "closed", "f": "labiodental", "v": "labiodental",
    "ʃ": "postalveolar", "ʒ": "postalveolar", "ɕ": "postalveolar", "ʑ": "postalveolar", "ʂ": "postalveolar",
    "ʐ": "postalveolar", "s": "sibilant", "z": "sibilant", "h": "aspirate", "ɦ": "aspirate",
}


def classify(symbol: str) -> list[str]:
    """Viseme classes for one IPA phoneme; diphthongs give two (start and end shape)."""
    base = "".join(ch for ch in unicodedata.normalize("NFD", symbol) if unicodedata.category(ch)[0] == "L")
    if not base:
        return []
    vowels = [_VOWELS[ch] for ch in base if ch in _VOWELS]
    first = base[0]
    if first in _CONSONANTS and (first not in "ʃʒɕʑʂʐ" or not vowels):
        return [_CONSONANTS[first]]
    if vowels:
        return vowels[:1] if len(vowels) == 1 or vowels[0] == vowels[-1] else [vowels[0], vowels[-1]]
    return ["postalveolar"] if any(ch in "ʃʒɕʑʂʐ" for ch in base) else ["consonant"]


@dataclass(frozen=True)
class Trajectory:
    openness: np.ndarray
    spread: np.ndarray


def _keyframes(phonemes: list[Phoneme]) -> tuple[list[float], list[tuple[float, float]], list[tuple[float, float]]]:
    times, values, closures = [], [], []
    for ph in phonemes:
        classes = classify(ph.symbol)
        dur = max(ph.end - ph.start, 1e-3)
        if not classes:
            if dur > 0.06:  # a real pause: let the mouth come to rest
                times += [ph.start + 0.3 * dur, ph.end - 0.3 * dur]
                values += [REST, REST]
            continue
        for k, cls in enumerate(classes):
            times.append(ph.start + dur * (k + 1) / (len(classes) + 1))
            values.append(TARGETS[cls])
        if classes == ["closed"]:
            closures.append((ph.start + 0.15 * dur, ph.end - 0.15 * dur))
    return times, values, closures


def from_phonemes(speech: Speech, fps: float, n_frames: int) -> Trajectory:
    """Targets at phoneme centres, interpolated and smoothed (σ ≈ 35 ms), scaled by loudness."""
    t = np.arange(n_frames) / fps
    times, values, closures = _keyframes(speech.phonemes)
    if not times:
        return from_audio(speech, fps, n_frames)
    vals = np.array(values, np.float64)
    times_a = np.array(times)
    first, last = speech.phonemes[0].start, speech.phonemes[-1].end
    kt = np.concatenate([[first - 0.05], times_a, [last + 0.05]])
    kopen = np.concatenate([[0.0], vals[:, 0], [0.0]])
    kspread = np.concatenate([[0.0], vals[:, 1], [0.0]])
    sigma = 0.035 * fps
    openness = gaussian_filter1d(np.interp(t, kt, kopen, left=0.0, right=0.0), sigma, mode="nearest")
    spread = gaussian_filter1d(np.interp(t, kt, kspread, left=0.0, right=0.0), sigma, mode="nearest")
    env = gaussian_filter1d(speech_envelope(speech.samples, speech.sample_rate, fps, n_frames), 0.5)
    openness = openness * (0.45 + 0.55 * env)
    for start, end in closures:
        i0, i1 = int(np.floor(start * fps)), int(np.ceil(end * fps))
        openness[max(i0, 0): max(i1, i0 + 1)] = np.minimum(openness[max(i0, 0): max(i1, i0 + 1)], 0.02)
    return Trajectory(np.clip(openness, 0, 1).astype(np.float32), np.clip(spread, -1, 1).astype(np.float32))


def from_audio(speech: Speech, fps: float, n_frames: int) -> Trajectory:
    """No timings: opening follows the speech envelope (fast attack, slower release), spread the F2 balance."""
    feats = mouth_features(speech.samples, speech.sample_rate, fps, n_frames)
    attack, release = 1 - np.exp(-1 / (0.03 * fps)), 1 - np.exp(-1 / (0.08 * fps))
    opening = np.zeros(n_frames, np.float64)
    level = 0.0
    for i, target in enumerate(np.clip((feats.openness - 0.1) / 0.9, 0, 1)):
        level += (attack if target > level else release) * (target - level)
        opening[i] = level
    opening = gaussian_filter1d(opening, 0.6)
    spread = gaussian_filter1d(feats.spread.astype(np.float64), 1.0) * 0.7
    return Trajectory(np.clip(opening, 0, 1).astype(np.float32), np.clip(spread, -1, 1).astype(np.float32))


def trajectory(speech: Speech, fps: float, n_frames: int) -> Trajectory:
    return from_phonemes(speech, fps, n_frames) if speech.phonemes else from_audio(speech, fps, n_frames)
