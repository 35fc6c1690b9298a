"""A still photo as a living template: natural blinks and a slight, smooth head sway.

Both are displacement fields that fade to zero away from the head, so the background and
shoulders stay put and no seam appears; the landmarks are moved by the same field.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .frames import Region, from_bgr

SWAY_DEG = 1.3
SWAY_PX = 2.5
BLINK_S = 0.18


@dataclass(frozen=True)
class Motion:
    angle_deg: float
    dx: float
    dy: float
    blink: float  # 0 open .. 1 closed


def motion_at(t: float, seed: int = 7) -> Motion:
    """Sum of slow, incommensurate sines (never periodic to the eye) plus blinks every 2.5–5 s."""
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, 6)
    angle = SWAY_DEG * (0.6 * np.sin(2 * np.pi * 0.13 * t + phases[0]) + 0.4 * np.sin(2 * np.pi * 0.29 * t + phases[1]))
    dx = SWAY_PX * (0.7 * np.sin(2 * np.pi * 0.11 * t + phases[2]) + 0.3 * np.sin(2 * np.pi * 0.37 * t + phases[3]))
    dy = 0.6 * SWAY_PX * np.sin(2 * np.pi * 0.17 * t + phases[4])
    return Motion(float(angle), float(dx), float(dy), _blink(t, rng))


def _blink(t: float, rng: np.random.Generator) -> float:
    start = 1.2 + rng.uniform(0, 1.0)
    while start <= t + BLINK_S:
        if start <= t <= start + BLINK_S:
            phase = (t - start) / BLINK_S
            # Lids close fast (first 40%) and reopen more slowly.
            return float(np.sin(np.pi / 2 * phase / 0.4) if phase < 0.4 else np.cos(np.pi / 2 * (phase - 0.4) / 0.6))
        start += rng.uniform(2.5, 5.0)
    return 0.0


SWAY_GRID = 8  # the sway field is smooth: compute it every 8 px and interpolate


class LivingPhoto:
    """Generates I420 frame ``i`` of a photo avatar (BGR, even size) at ``fps``; deterministic per index."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray, fps: float, seed: int = 7) -> None:
        self.image = from_bgr(image)
        self.size = (image.shape[1], image.shape[0])
        self.landmarks = landmarks.astype(np.float32)
        self.fps = fps
        self.seed = seed
        h, w = image.shape[:2]
        lm = self.landmarks
        face_h = float(lm[8, 1] - min(lm[19, 1], lm[24, 1]))
        self.center = np.array([lm[27:36, 0].mean(), lm[27:36, 1].mean()], np.float32)
        # The head pivots near the base of the skull; the field fades out below the chin.
        self.pivot = np.array([self.center[0], lm[8, 1] + 0.25 * face_h], np.float32)
        radius = 1.5 * face_h
        r = Region.around(self.center[0] - radius, self.center[1] - radius, self.center[0] + radius,
                          lm[8, 1] + 0.6 * face_h, w, h)
        x0, y0, x1, y1 = r.x0, r.y0, r.x1, r.y1
        self.roi = (x0, y0, x1, y1)
        gys, gxs = np.mgrid[y0:y1 + SWAY_GRID:SWAY_GRID, x0:x1 + SWAY_GRID:SWAY_GRID].astype(np.float32)
        self.coarse = (gxs, gys)
        self.weight = self._head_weight(gxs, gys, radius, lm[8, 1], face_h)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        self.grid = (xs, ys)
        self.eyes = [self._eye_field(eye, (x0, y0, x1, y1)) for eye in (lm[36:42], lm[42:48])]

    def _head_weight(self, xs, ys, radius, chin_y, face_h) -> np.ndarray:
        r = np.hypot(xs - self.center[0], (ys - self.center[1]) * 0.85) / radius
        weight = np.clip(1.0 - r, 0.0, 1.0) ** 1.5 * 2.2
        below = np.clip((ys - chin_y) / (0.5 * face_h), 0.0, 1.0)
        return (np.clip(weight, 0, 1) * (1.0 - below) ** 2).astype(np.float32)

    @staticmethod
    def _eye_field(eye: np.ndarray, roi: tuple[int, int, int, int]) -> dict:
        """Geometry of one eye: a window around it, the lid line, and how far each column may close."""
        left, right = eye[0, 0], eye[3, 0]
        width = right - left
        upper = (eye[1, 1] + eye[2, 1]) / 2
        lower = (eye[4, 1] + eye[5, 1]) / 2
        gap = max(lower - upper, 1.0) + 1.0
        cx = (left + right) / 2
        x0, y0, x1, y1 = roi
        top = upper - 0.9 * width  # lid skin up to about the brow stretches as the lid comes down
        ex0, ex1 = int(max(x0, cx - 0.7 * width)), int(min(x1, cx + 0.7 * width) + 1)
        ey0, ey1 = int(max(y0, top)), int(min(y1, lower + 3))
        ys, xs = np.mgrid[ey0:ey1, ex0:ex1].astype(np.float32)
        horiz = np.clip(1.0 - np.abs(xs - cx) / (0.6 * width), 0, 1)
        horiz = np.sin(horiz * np.pi / 2) ** 0.6
        window = (slice(ey0 - y0, ey1 - y0), slice(ex0 - x0, ex1 - x0))
        return {"window": window, "ys": ys, "horiz": horiz.astype(np.float32), "upper": np.float32(upper),
                "top": np.float32(top), "gap": np.float32(gap)}

    @staticmethod
    def _blink_shift(eye: dict, amount: float) -> np.ndarray:
        """Backward vertical shift that draws the upper lid down by ``amount`` of the eye opening.

        Above the new lid edge the lid skin is stretched from [top, upper] onto [top, edge]; below
        it the eye is left as it is, so the lid slides over the iris instead of moving it.
        """
        ys, top, upper = eye["ys"], eye["top"], eye["upper"]
        edge = upper + np.float32(amount) * eye["gap"] * eye["horiz"]
        src = top + (ys - top) * (upper - top) / np.maximum(edge - top, 1e-3)
        cover = np.clip(edge + 0.5 - ys, 0.0, 1.0) * (ys >= top)
        return ((ys - src) * cover).astype(np.float32)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        m = motion_at(index / self.fps, self.seed)
        gxs, gys = self.coarse
        theta = np.deg2rad(m.angle_deg)
        cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        px, py = self.pivot
        # Forward displacement of a head point: rotation about the pivot plus a shift.
        fx = self.weight * ((cos - 1) * (gxs - px) - sin * (gys - py) + np.float32(m.dx))
        fy = self.weight * (sin * (gxs - px) + (cos - 1) * (gys - py) + np.float32(m.dy))
        x0, y0, x1, y1 = self.roi
        size = (gxs.shape[1] * SWAY_GRID, gxs.shape[0] * SWAY_GRID)
        dx = cv2.resize(fx, size, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
        dy = cv2.resize(fy, size, interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
        if m.blink > 0:
            for eye in self.eyes:
                dy[eye["window"]] += self._blink_shift(eye, m.blink)
        xs, ys = self.grid
        w, h = self.size
        out = self.image.copy()
        out[y0:y1, x0:x1] = cv2.remap(self.image[:h], xs - dx, ys - dy, cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REFLECT101)
        # Chroma planes are half size: the same field, sampled every other pixel and halved.
        cdx, cdy = dx[::2, ::2] * 0.5, dy[::2, ::2] * 0.5
        cxs, cys = xs[::2, ::2] * 0.5, ys[::2, ::2] * 0.5
        src = self.image[h:].reshape(2, h // 2, w // 2)
        dst = out[h:].reshape(2, h // 2, w // 2)
        for plane in range(2):
            dst[plane, y0 // 2:y1 // 2, x0 // 2:x1 // 2] = cv2.remap(
                src[plane], cxs - cdx, cys - cdy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        return out, self._moved_landmarks(dx, dy)

    def _moved_landmarks(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.roi
        lm = self.landmarks.copy()
        ix = np.clip(np.round(lm[:, 0]).astype(int) - x0, 0, x1 - x0 - 1)
        iy = np.clip(np.round(lm[:, 1]).astype(int) - y0, 0, y1 - y0 - 1)
        lm[:, 0] += dx[iy, ix]
        lm[:, 1] += dy[iy, ix]
        return lm
