"""Colours of the inside of the mouth, taken from the face itself.

Nothing here is a fixed colour: the cavity and tongue are the template's own lip colour,
darkened, and the teeth are a light neutral tinted by the skin's colour cast. A black-and-white
picture therefore gets a colourless mouth, and warm or cool light or any skin tone gets matching
tones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MouthPalette:
    """BGR float colours (0..255)."""

    cavity: np.ndarray  # the back of the mouth, before depth shading
    tongue: np.ndarray
    teeth: np.ndarray


def _luma(bgr: np.ndarray) -> float:
    return float(0.114 * bgr[0] + 0.587 * bgr[1] + 0.299 * bgr[2])


def mouth_palette(lip: np.ndarray, skin: np.ndarray) -> MouthPalette:
    """The palette for a face whose lips average ``lip`` and skin averages ``skin`` (BGR).

    The cast is the skin's colour relative to its own brightness; teeth take a softened version
    of it (they are whiter than skin but lit by the same light).
    """
    lip = np.asarray(lip, np.float32)
    skin = np.asarray(skin, np.float32)
    skin_l = max(_luma(skin), 1.0)
    cast = np.clip(skin / skin_l, 0.2, 3.0) ** 0.45
    teeth_l = float(np.clip(0.9 * skin_l + 55.0, 120.0, 240.0))
    teeth = np.clip(teeth_l * cast, 0, 255)
    # Inside the mouth is the lips' own hue, darker and a little more saturated than the lips.
    lip_l = _luma(lip)
    hue = lip - lip_l
    cavity = np.clip(0.36 * (lip_l + 1.4 * hue), 0, 255)
    tongue = np.clip(0.72 * (lip_l + 1.3 * hue), 0, 255)
    return MouthPalette(cavity.astype(np.float32), tongue.astype(np.float32), teeth.astype(np.float32))
