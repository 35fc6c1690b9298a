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
CHANGED = 2  # canvas pixels that moved by less than this (resampling noise) keep the image's own


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
        """The canvas: the image resampled onto the mouth-aligned grid (bicubic when upsampling a lot)."""
        flags = cv2.INTER_CUBIC if self.scale > 1.5 else cv2.INTER_LINEAR
        return cv2.warpAffine(image, self.matrix(self.scale), self.size, flags=flags, borderMode=cv2.BORDER_REPLICATE)

    def paste(self, image: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """A copy of ``image`` with the canvas ``after`` averaged down and laid back where it differs
        from ``before``; elsewhere the image keeps its own pixels (and its own fine detail)."""
        diff = cv2.absdiff(after, before)
        changed = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) > CHANGED
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        out = image.copy()
        if len(rows) == 0:
            return out
        pad = int(np.ceil(3 * self.scale)) + 2
        ch, cw = changed.shape
        y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, ch)
        x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, cw)
        grow = max(1, round(self.scale))
        weight = cv2.dilate(changed[y0:y1, x0:x1].astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
        weight = cv2.GaussianBlur(weight.astype(np.float32), (0, 0), max(0.7, 0.5 * self.scale))
        colour = np.ascontiguousarray(after[y0:y1, x0:x1])
        small = (max(1, round((x1 - x0) / self.scale)), max(1, round((y1 - y0) / self.scale)))
        if self.scale > 1.0:
            colour = cv2.resize(colour, small, interpolation=cv2.INTER_AREA)
            weight = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
        fx, fy = small[0] / (x1 - x0), small[1] / (y1 - y0)
        # image -> canvas crop -> averaged-down crop (cv2.resize maps pixel centres onto pixel centres)
        m = self.matrix(self.scale)
        to_small = np.vstack([fx * m[0], fy * m[1]])
        to_small[:, 2] += [fx * (0.5 - x0) - 0.5, fy * (0.5 - y0) - 0.5]
        back_m = cv2.invertAffineTransform(to_small)
        corners = np.array([[0, 0], [small[0], 0], [0, small[1]], [small[0], small[1]]], float)
        img_pts = corners @ back_m[:, :2].T + back_m[:, 2]
        ih, iw = image.shape[:2]
        ix0, iy0 = np.clip(np.floor(img_pts.min(0)).astype(int), 0, [iw, ih])
        ix1, iy1 = np.clip(np.ceil(img_pts.max(0)).astype(int) + 1, 0, [iw, ih])
        if ix1 - ix0 < 1 or iy1 - iy0 < 1:
            return out
        to_small[:, 2] += to_small[:, :2] @ [ix0, iy0]
        size, flags = (ix1 - ix0, iy1 - iy0), cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        colour = cv2.warpAffine(colour, to_small, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(weight, to_small, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        alpha = np.clip(alpha, 0.0, 1.0)
        region = np.ascontiguousarray(out[iy0:iy1, ix0:ix1])
        out[iy0:iy1, ix0:ix1] = cv2.blendLinear(colour, region, alpha, 1.0 - alpha)
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
