"""Regions of the face that renderers work in, derived from 68-point landmarks."""

from __future__ import annotations

import numpy as np

from ..frames import Region

MOUTH_SLACK = 0.02  # extra margin (of face height) around the warp, for the patch handed to the encoder


def mouth_bounds(lm: np.ndarray, slack: float = 0.0) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of the area a mouth warp moves: just under the nose to below the chin, jaw to jaw."""
    face_h = float(np.linalg.norm(lm[8] - lm[27]))
    side, top, bottom = (0.10 + slack) * face_h, (0.05 + slack) * face_h, (0.45 + slack) * face_h
    x0, x1 = min(lm[3, 0], lm[13, 0]) - side, max(lm[3, 0], lm[13, 0]) + side
    y0 = min(lm[33, 1] - top, lm[3, 1], lm[13, 1])
    return x0, y0, x1, lm[8, 1] + bottom


def mouth_region(lm: np.ndarray, width: int, height: int) -> Region:
    """Where a mouth edit may reach in one frame, with a little slack, on even pixels."""
    return Region.around(*mouth_bounds(lm, MOUTH_SLACK), width, height)


def track_mouth_region(landmarks: np.ndarray, width: int, height: int) -> Region:
    """The union of every frame's mouth region: one fixed rectangle for a whole template."""
    boxes = np.array([[r.x0, r.y0, r.x1, r.y1] for r in (mouth_region(lm, width, height) for lm in landmarks)])
    return Region(int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))
