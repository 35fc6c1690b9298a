"""The inside of an open mouth, drawn on the mouth canvas between the wanted inner-lip edges.

Depth shading (dark at the back, the lips' wet inner surface lighter), upper teeth under the
upper lip, and when the mouth is wide a hint of tongue and lower teeth. Every colour comes from
``MouthPalette``, i.e. from the face.
"""

from __future__ import annotations

import numpy as np

from .mouth_colours import MouthPalette
from .mouth_shape import MouthTarget


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def paint_cavity(img: np.ndarray, target: MouthTarget, cx: float, mouth_w: float, palette: MouthPalette) -> None:
    """Draw the cavity into ``img`` (canvas, BGR uint8) in place; nothing where the lips meet."""
    gap = target.gap
    cols = np.nonzero(gap > 0.3)[0]
    if len(cols) == 0:
        return
    lip_top, lip_bottom = target.curves.inner_top, target.curves.inner_bottom
    # The template's own teeth/opening stay next to the lips; the new part is between them.
    top_edge, bottom_edge = lip_top + target.kept_top, lip_bottom - target.kept_bottom
    gap = np.maximum(bottom_edge - top_edge, 0.0) * (gap > 0.3)
    cols = np.nonzero(gap > 0.3)[0]
    if len(cols) == 0:
        return
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0 = max(int(np.floor(top_edge[x0:x1].min())) - 1, 0)
    y1 = min(int(np.ceil(bottom_edge[x0:x1].max())) + 2, img.shape[0])
    if y1 - y0 < 2:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    it, ib, g = top_edge[None, x0:x1], bottom_edge[None, x0:x1], gap[None, x0:x1]
    lip_it = lip_top[None, x0:x1]
    soft = 0.5 + target.kept_top[None, x0:x1] / 3
    alpha = np.clip((ys - it) / soft + 0.5, 0, 1) * np.clip(ib - ys + 0.5, 0, 1)
    u = (xs - cx) / max(target.half_w, 1.0)
    max_gap = float(gap.max())
    # Depth: the nearer a point is to a lip, the more of the lips' wet inner surface it shows.
    near = np.minimum(ys - it, ib - ys)
    wet = np.exp(-np.clip(near, 0, None) / (0.025 * mouth_w)) * 0.8
    back = 0.55 + 0.45 * np.abs(u) ** 2
    fill = palette.cavity * (back * (1 - wet) + 1.5 * wet)[..., None]

    wide = _smoothstep((max_gap - 0.12 * mouth_w) / (0.12 * mouth_w))
    if wide > 0:
        ty = ib - 0.1 * g
        r = np.sqrt((u / 0.62) ** 2 + ((ys - ty) / np.maximum(0.42 * g, 1.0)) ** 2)
        tongue = (1 - _smoothstep((r - 0.75) / 0.25)) * wide
        shade = (0.75 + 0.25 * np.clip((ys - (ty - 0.4 * g)) / np.maximum(0.4 * g, 1.0), 0, 1))
        fill = fill * (1 - tongue[..., None]) + (palette.tongue * shade[..., None]) * tongue[..., None]
        low_h = np.minimum(0.035 * mouth_w, 0.12 * g) * np.sqrt(np.clip(1 - (u / 0.42) ** 2, 0, 1)) * wide
        lower = np.clip(ys - (ib - low_h) + 0.5, 0, 1) * (low_h > 0.3)
        fill = fill * (1 - lower[..., None]) + (palette.teeth * 0.62)[None, None, :] * lower[..., None]

    across = np.clip(1 - (u / 0.82) ** 2, 0, 1)
    teeth_h = np.minimum(0.1 * mouth_w, 0.5 * (ib - lip_it)) * np.sqrt(across)
    upper = np.clip(lip_it + teeth_h - ys + 0.5, 0, 1) * (lip_it + teeth_h - it > 0.3)
    depth = np.clip((ys - lip_it) / np.maximum(teeth_h, 1.0), 0, 1)
    lit = (1.0 - 0.35 * np.abs(u) ** 2) * (0.82 + 0.18 * depth)
    fill = fill * (1 - upper[..., None]) + (palette.teeth * lit[..., None]) * upper[..., None]

    region = img[y0:y1, x0:x1].astype(np.float32)
    a = alpha[..., None]
    img[y0:y1, x0:x1] = np.clip(region * (1 - a) + fill * a + 0.5, 0, 255).astype(np.uint8)
