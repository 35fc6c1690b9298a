"""The fixed working resolution for mouth edits: a face of any size or tilt is mapped onto a
canvas on which the mouth is horizontal and ``WORK_MOUTH_W`` pixels wide.

Small faces are upsampled so that the lips, teeth and seam are drawn with enough pixels and then
averaged down, instead of being drawn with two or three aliased pixels; large faces are only
rotated. Only the changed part travels back to the frame, so pixels the edit leaves alone stay
exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_MOUTH_W = 112.0  # mouth width on the canvas; below this the face is upsampled


@dataclass(frozen=True)
class MouthSpace:
    """A rotation about ``centre`` followed by an upsampling of ``scale`` ≥ 1."""

    centre: np.ndarray  # image point that lands on ``origin``
    angle: float  # radians; the mouth's tilt in the image
    scale: float
    origin: np.ndarray  # canvas point of ``centre``
    size: tuple[int, int]  # canvas (width, height)

    def matrix(self, scale: float) -> np.ndarray:
        """2×3 image → canvas affine at a given scale (``self.scale`` or 1 for the rotated-only canvas)."""
        c, s = np.cos(-self.angle), np.sin(-self.angle)
        rot = np.array([[c, -s], [s, c]]) * scale
        origin = self.origin * scale / self.scale
        return np.hstack([rot, (origin - rot @ self.centre)[:, None]])

    def to_canvas(self, pts: np.ndarray) -> np.ndarray:
        m = self.matrix(self.scale)
        return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)

    def lift(self, image: np.ndarray) -> np.ndarray:
        """The canvas: the image resampled (bicubic) onto the mouth-aligned, upsampled grid."""
        return cv2.warpAffine(image, self.matrix(self.scale), self.size, flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)

    def paste(self, image: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """A copy of ``image`` with the canvas ``after`` averaged down and laid back where it differs
        from ``before``; elsewhere the image keeps its own pixels (and its own fine detail)."""
        changed = (np.abs(after.astype(np.int16) - before.astype(np.int16)).max(-1) > 0).astype(np.uint8)
        changed = cv2.dilate(changed, np.ones((3, 3), np.uint8), iterations=max(1, round(self.scale)))
        weight = cv2.GaussianBlur(changed.astype(np.float32), (0, 0), max(0.7, 0.5 * self.scale))
        layers = np.dstack([after.astype(np.float32), weight])
        w, h = self.size
        small_size = (max(1, round(w / self.scale)), max(1, round(h / self.scale)))
        if self.scale > 1.0:
            layers = cv2.resize(layers, small_size, interpolation=cv2.INTER_AREA)
        m = cv2.invertAffineTransform(self.matrix(small_size[0] / w * self.scale))
        corners = np.array([[0, 0], [small_size[0], 0], [0, small_size[1]], [small_size[0], small_size[1]]], float)
        img_pts = corners @ m[:, :2].T + m[:, 2]
        ih, iw = image.shape[:2]
        x0, y0 = np.clip(np.floor(img_pts.min(0)).astype(int), 0, [iw, ih])
        x1, y1 = np.clip(np.ceil(img_pts.max(0)).astype(int) + 1, 0, [iw, ih])
        out = image.copy()
        if x1 - x0 < 2 or y1 - y0 < 2:
            return out
        m[:, 2] -= [x0, y0]
        back = cv2.warpAffine(layers, cv2.invertAffineTransform(m), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR
                              | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        alpha = np.clip(back[..., 3:], 0.0, 1.0)
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + back[..., :3] * alpha + 0.5, 0, 255).astype(np.uint8)
        return out


def mouth_space(lm: np.ndarray, box: tuple[float, float, float, float]) -> MouthSpace:
    """The working canvas for a face: ``box`` (x0, y0, x1, y1, image pixels) around the mouth,
    rotated so the lip corners are level and scaled so the mouth is at least ``WORK_MOUTH_W`` wide."""
    u = lm[54] - lm[48]
    mouth_w = float(np.hypot(*u)) or 1.0
    angle = float(np.arctan2(u[1], u[0]))
    scale = max(1.0, WORK_MOUTH_W / mouth_w)
    x0, y0, x1, y1 = box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float64)
    c, s = abs(np.cos(angle)), abs(np.sin(angle))
    bw, bh = x1 - x0, y1 - y0
    w, h = (c * bw + s * bh) * scale, (s * bw + c * bh) * scale
    size = (int(np.ceil(w)) + 2, int(np.ceil(h)) + 2)
    return MouthSpace(centre, angle, scale, np.array([size[0] / 2, size[1] / 2]), size)
