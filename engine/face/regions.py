"""Regions of the face that renderers work in, derived from 68-point landmarks."""

from __future__ import annotations

import numpy as np

from ..frames import Region


def mouth_region(lm: np.ndarray, width: int, height: int) -> Region:
    """Where a mouth edit may reach in one frame: nose tip to below the chin, jaw to jaw."""
    face_h = float(np.linalg.norm(lm[8] - lm[27]))
    x0, x1 = min(lm[3, 0], lm[13, 0]) - 0.12 * face_h, max(lm[3, 0], lm[13, 0]) + 0.12 * face_h
    y0 = min(lm[33, 1] - 0.07 * face_h, lm[3, 1], lm[13, 1])
    return Region.around(x0, y0, x1, lm[8, 1] + 0.47 * face_h, width, height)


def track_mouth_region(landmarks: np.ndarray, width: int, height: int) -> Region:
    """The union of every frame's mouth region: one fixed rectangle for a whole template."""
    boxes = np.array([[r.x0, r.y0, r.x1, r.y1] for r in (mouth_region(lm, width, height) for lm in landmarks)])
    return Region(int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max()))
