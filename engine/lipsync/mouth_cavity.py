"""The inside of an open mouth, drawn on the mouth canvas between the wanted inner-lip edges.

A mouth interior is not a black hole: light from the front reaches the lips' wet inner surface,
the tongue and the teeth, and only the back and the corners (the cheeks' shadow) go dark. So the
fill is shaded by depth, from the face's darkened lip colour at the back to a lighter warm tone
next to the lips, and it meets the lips in a ramp laid over the lip edge rather than a drawn line.
Upper teeth hang under the upper lip; when the mouth is wide a tongue and lower teeth show.
Every colour comes from ``MouthPalette``, i.e. from the face.
"""

from __future__ import annotations

import numpy as np

from .mouth_colours import MouthPalette
from .mouth_shape import MouthTarget

EDGE_SOFT = 0.018  # width of the ramp where lips meet the cavity, as a fraction of the mouth width
WET_REACH = 0.05  # how far the lit inner surface of the lips reaches into the cavity (fraction of width)


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def paint_cavity(img: np.ndarray, target: MouthTarget, cx: float, mouth_w: float, palette: MouthPalette) -> None:
    """Draw the cavity into ``img`` (canvas, BGR uint8) in place; nothing where the lips meet."""
    lip_top, lip_bottom = target.curves.inner_top, target.curves.inner_bottom
    # The template's own upper teeth stay under the upper lip. What it showed above its lower
    # lip stays too while the mouth is barely open, and is painted over as it opens (stretched
    # down with the jaw it would be a pale stray strip).
    top_edge = lip_top + target.kept_top
    cover = float(_smoothstep((float(target.gap.max()) - 0.09 * mouth_w) / (0.04 * mouth_w)))
    bottom_edge = lip_bottom - target.kept_bottom * (1 - cover)
    gap = np.maximum(bottom_edge - top_edge, 0.0) * (target.gap > 0.3)
    cols = np.nonzero(gap > 0.3)[0]
    if len(cols) == 0:
        return
    soft = 1.0 + cover * max(EDGE_SOFT * mouth_w - 1.0, 0.0)
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0 = max(int(np.floor(top_edge[x0:x1].min() - soft)) - 1, 0)
    y1 = min(int(np.ceil(bottom_edge[x0:x1].max() + soft)) + 2, img.shape[0])
    if y1 - y0 < 2:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    # float32 throughout: the curves come as float64, which would double the per-pixel work.
    it, ib, g, lip_it, kept = (np.asarray(a[None, x0:x1], np.float32)
                               for a in (top_edge, bottom_edge, gap, lip_top, target.kept_top))
    # Coverage is whole inside the opening; once the cavity reaches the lower lip it ramps off
    # across the lip's rim, so the lip fades into the cavity instead of being outlined.
    top_soft = 0.5 + kept / 3
    alpha = np.clip((ys - it) / top_soft + 0.5, 0, 1) * np.clip((ib - ys) / soft + 0.5 + 0.5 * cover, 0, 1)
    u = (xs - np.float32(cx)) / np.float32(max(target.half_w, 1.0))
    max_gap = float(gap.max())
    opened = float(_smoothstep(max_gap / (0.18 * mouth_w)))

    # Depth: dark at the back and towards the corners, lighter and warmer near the lips and, in
    # an open mouth, in the middle where the light gets in.
    near = np.clip(np.minimum(ys - it, ib - ys), 0, None)
    wet = np.exp(-near / (WET_REACH * mouth_w))
    low = np.clip((ys - it) / np.maximum(g, 1.0), 0, 1)
    corner = np.clip(np.abs(u), 0, 1) ** 2
    light = np.clip(0.35 * wet + 0.75 * opened * low * (1 - corner), 0, 1) * (1 - 0.7 * corner)
    deep = palette.cavity * 0.66
    front = palette.tongue * 0.85
    fill = deep + (front - deep) * light[..., None]

    wide = float(_smoothstep((max_gap - 0.1 * mouth_w) / (0.14 * mouth_w)))
    if wide > 0:
        fill = _tongue_and_lower_teeth(fill, ys, u, ib, g, mouth_w, wide, palette)

    across = np.clip(1 - (u / 0.85) ** 2, 0, 1)
    teeth_h = np.minimum(0.09 * mouth_w, 0.45 * (ib - lip_it)) * np.sqrt(across)
    upper = np.clip(lip_it + teeth_h - ys + 0.5, 0, 1) * (lip_it + teeth_h - it > 0.3)
    depth = np.clip((ys - lip_it) / np.maximum(teeth_h, 1.0), 0, 1)
    lit = (1.0 - 0.45 * np.abs(u) ** 2) * (0.8 + 0.2 * depth)
    fill = fill * (1 - upper[..., None]) + (palette.teeth * lit[..., None]) * upper[..., None]

    region = img[y0:y1, x0:x1].astype(np.float32)
    a = alpha[..., None]
    img[y0:y1, x0:x1] = np.clip(region * (1 - a) + fill * a + 0.5, 0, 255).astype(np.uint8)


def _tongue_and_lower_teeth(fill: np.ndarray, ys: np.ndarray, u: np.ndarray, ib: np.ndarray, g: np.ndarray,
                            mouth_w: float, wide: float, palette: MouthPalette) -> np.ndarray:
    """A wide mouth shows a soft, rounded tongue low in the cavity, its back in shadow, and the
    tips of the lower teeth just above the lower lip, in the middle only."""
    ty = ib - 0.05 * g
    r = np.sqrt((u / 0.7) ** 2 + ((ys - ty) / np.maximum(0.5 * g, 1.0)) ** 2)
    tongue = (1 - _smoothstep((r - 0.6) / 0.4)) * wide * 0.9
    shade = 0.7 + 0.3 * _smoothstep((ys - (ty - 0.5 * g)) / np.maximum(0.35 * g, 1.0))
    fill = fill + (palette.tongue * shade[..., None] - fill) * tongue[..., None]
    low_h = np.minimum(0.022 * mouth_w, 0.08 * g) * np.clip(1 - (u / 0.3) ** 2, 0, 1) * wide
    lower = 0.75 * np.clip((ys - (ib - low_h)) / np.maximum(0.5 * low_h, 0.6), 0, 1) * (low_h > 0.4)
    tone = palette.teeth * (0.6 - 0.2 * np.abs(u / 0.3))[..., None]
    return fill + (tone - fill) * lower[..., None]
