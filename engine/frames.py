"""Frames travel as I420 (planar YUV 4:2:0, the layout H.264 stores) from decoder to encoder.

Skipping the full-frame RGB round trip keeps everything a renderer does not touch exactly as the
template had it, and costs nothing; renderers convert only the region they edit.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def to_bgr(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_YUV2BGR_I420)


def from_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)


@dataclass(frozen=True)
class Region:
    """An even-aligned rectangle (chroma is subsampled 2x2, so edits must start on even pixels)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def around(cls, x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Region:
        ex0, ey0 = max(0, int(np.floor(x0)) & ~1), max(0, int(np.floor(y0)) & ~1)
        ex1, ey1 = min(width, (int(np.ceil(x1)) + 1) & ~1), min(height, (int(np.ceil(y1)) + 1) & ~1)
        return cls(ex0, ey0, max(ex1, ex0 + 2), max(ey1, ey0 + 2))

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _planes(frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of Y (h, w), U and V (h/2, w/2) inside an I420 buffer."""
    y = frame[:height]
    chroma = frame[height:].reshape(2, height // 2, width // 2)
    return y, chroma[0], chroma[1]


def crop(frame: np.ndarray, width: int, height: int, r: Region) -> np.ndarray:
    """The region as an I420 frame of its own."""
    y, u, v = _planes(frame, width, height)
    cy0, cy1, cx0, cx1 = r.y0 // 2, r.y1 // 2, r.x0 // 2, r.x1 // 2
    return np.concatenate([
        y[r.y0:r.y1, r.x0:r.x1].ravel(), u[cy0:cy1, cx0:cx1].ravel(), v[cy0:cy1, cx0:cx1].ravel(),
    ]).reshape(r.height * 3 // 2, r.width)


def read_region(frame: np.ndarray, width: int, height: int, r: Region) -> np.ndarray:
    """The region as a BGR image."""
    return cv2.cvtColor(crop(frame, width, height, r), cv2.COLOR_YUV2BGR_I420)


def write_region(frame: np.ndarray, width: int, height: int, r: Region, image: np.ndarray) -> None:
    """Put a BGR image back into the region of a writable I420 frame."""
    small = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YUV_I420)
    y, u, v = _planes(frame, width, height)
    h2, w2 = r.height // 2, r.width // 2
    y[r.y0:r.y1, r.x0:r.x1] = small[:r.height]
    chroma = small[r.height:].reshape(2, h2, w2)
    u[r.y0 // 2:r.y1 // 2, r.x0 // 2:r.x1 // 2] = chroma[0]
    v[r.y0 // 2:r.y1 // 2, r.x0 // 2:r.x1 // 2] = chroma[1]
