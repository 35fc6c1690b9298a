"""Expression over time: how much of the template's smile to relax, and the mouth's rest width.

People speaking do not hold a broad smile: it relaxes while they talk and comes back in
pauses. ``speaking_level`` is 1 during speech and eases to 0 over pauses, so the renderer can
relax the corners by ``mouth_smile_relax`` × that level.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

TALKING = 0.06  # openness above which a frame counts as speech
HOLD_S = 0.35  # gaps shorter than this (stops, closures) are still speech
EASE_S = 0.15  # the smile leaves and returns over about this long


def speaking_level(openness: np.ndarray, fps: float) -> np.ndarray:
    """(N,) 0..1: how much the person is in the middle of speaking at each frame."""
    if len(openness) == 0:
        return np.zeros(0, np.float32)
    talking = (openness > TALKING).astype(np.float32)
    held = maximum_filter1d(talking, size=max(1, round(HOLD_S * fps)), mode="nearest")
    return np.clip(gaussian_filter1d(held, EASE_S * fps, mode="nearest"), 0.0, 1.0).astype(np.float32)


def rest_width_ratio(landmarks: np.ndarray) -> float:
    """The template's typical mouth width over its eye-corner distance (median over frames).

    Multiplied by a frame's eye distance it gives that frame's rest mouth width, a size that does
    not follow the template's own rounding and spreading.
    """
    lm = np.asarray(landmarks, np.float32).reshape(-1, 68, 2)
    mouth = np.linalg.norm(lm[:, 54] - lm[:, 48], axis=-1)
    eyes = np.linalg.norm(lm[:, 45] - lm[:, 36], axis=-1)
    return float(np.median(mouth / np.maximum(eyes, 1e-3)))
