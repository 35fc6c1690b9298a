"""Lip outlines as curves over canvas columns, for the template's mouth and for the wanted one.

On the mouth canvas (see ``mouth_space``) the lips are level, so every lip edge is a function
y(x). The template's edges come from its landmarks; the wanted edges are absolute: an opening
of the requested size around the template's own lip seam, whatever the template's mouth was
doing, so a talking template's motion is replaced rather than added to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

MAX_GAP = 0.42  # inner-lip gap at full opening, as a fraction of the rest mouth width
UPPER_SHARE = 0.22  # of an opening, how much the upper lip rises (the jaw does the rest)
TEETH_SHARE = 0.6  # of the template's own opening, the part that moves with the upper lip
SPREAD_W, ROUND_W = 0.08, 0.16  # corner travel (fraction of width) at full spread / full rounding
SMILE_W = 0.8  # a smile's width loss per unit of corner lift it relaxes
BOTTOM_ANCHOR = 0.3  # below the chin, of the face height: where the jaw's move has faded out
CORNER_FADE = 0.45  # beyond the corners, moves fade out over this fraction of the mouth width
OPENING_W = 0.9  # of the half-width between the corners, how far the opening reaches

_OUTER_TOP = [48, 49, 50, 51, 52, 53, 54]
_INNER_TOP = [48, 61, 62, 63, 54]
_INNER_BOTTOM = [48, 67, 66, 65, 54]
_OUTER_BOTTOM = [48, 59, 58, 57, 56, 55, 54]
_JAW = [4, 5, 6, 7, 8, 9, 10, 11, 12]


@dataclass
class LipCurves:
    """Per-column y of each edge, top to bottom, over canvas columns ``xs``."""

    top: np.ndarray  # fixed anchor under the nose
    outer_top: np.ndarray
    inner_top: np.ndarray
    inner_bottom: np.ndarray
    outer_bottom: np.ndarray
    chin: np.ndarray
    bottom: np.ndarray  # fixed anchor under the chin

    def knots(self) -> np.ndarray:
        k = np.stack([self.top, self.outer_top, self.inner_top, self.inner_bottom, self.outer_bottom,
                      self.chin, self.bottom])
        return np.maximum.accumulate(k, axis=0)


def _curve(lm: np.ndarray, idx: list[int], xs: np.ndarray, smooth: float) -> np.ndarray:
    pts = lm[idx]
    order = np.argsort(pts[:, 0], kind="stable")
    y = np.interp(xs, pts[order, 0], pts[order, 1])
    return gaussian_filter1d(y, smooth, mode="nearest") if smooth > 0 else y


@dataclass(frozen=True)
class MouthGeometry:
    """The template's mouth on the canvas."""

    xs: np.ndarray
    cx: float
    half_w: float
    curves: LipCurves
    seam: np.ndarray  # where the lips meet when the template's mouth is closed
    face_h: float


def template_geometry(lm: np.ndarray, width: int) -> MouthGeometry:
    """Edges of the template's lips (``lm`` in canvas pixels), and a closed-lip seam inside them."""
    xs = np.arange(width, dtype=np.float32)
    mouth_w = float(lm[54, 0] - lm[48, 0]) or 1.0
    smooth = 0.04 * mouth_w
    it = _curve(lm, _INNER_TOP, xs, smooth)
    ib = np.maximum(_curve(lm, _INNER_BOTTOM, xs, smooth), it)
    ot = np.minimum(_curve(lm, _OUTER_TOP, xs, 0.5 * smooth), it - 0.02 * mouth_w)
    ob = np.maximum(_curve(lm, _OUTER_BOTTOM, xs, 0.5 * smooth), ib + 0.02 * mouth_w)
    face_h = float(np.hypot(*(lm[8] - lm[27])))
    chin = np.maximum(_curve(lm, _JAW, xs, smooth), ob + 0.05 * face_h)
    top = np.minimum(np.full_like(xs, lm[33, 1] + 0.25 * (lm[51, 1] - lm[33, 1])), ot - 2.0)
    bottom = chin + BOTTOM_ANCHOR * face_h
    curves = LipCurves(top, ot, it, ib, ob, chin, bottom)
    seam = it + UPPER_SHARE * (ib - it)
    return MouthGeometry(xs, float((lm[48, 0] + lm[54, 0]) / 2), mouth_w / 2, curves, seam, face_h)


@dataclass(frozen=True)
class MouthTarget:
    """The wanted mouth: edges, the lip seam, and the column map back to the template."""

    curves: LipCurves
    source: LipCurves  # the template's edges, resampled at ``source_x``
    seam: np.ndarray
    cx: float
    gap: np.ndarray
    kept_top: np.ndarray  # how much of the template's own opening (teeth) stays under each lip
    kept_bottom: np.ndarray  # per-column inner opening
    source_x: np.ndarray  # template column each canvas column of the lips comes from
    half_w: float
    corner_fade: np.ndarray  # 1 between the corners, 0 well beyond them


def target_shape(geo: MouthGeometry, rest_w: float, openness: float, spread: float, relax: float) -> MouthTarget:
    """Absolute target: width from the rest width, spread/rounding and the relaxed smile; an
    opening of ``openness`` × ``MAX_GAP`` × ``rest_w`` following the lips' curve."""
    c = geo.curves
    xs, cx = geo.xs, geo.cx
    bend = geo.seam - np.interp(cx, xs, geo.seam)  # < 0 towards the corners of a smile
    lift = float(max(-np.interp([cx - 0.9 * geo.half_w, cx + 0.9 * geo.half_w], xs, bend).mean(), 0.0))
    relaxed = relax * np.minimum(bend, 0.0)
    smile_loss = SMILE_W * relax * lift
    shape = 1.0 + (SPREAD_W if spread > 0 else ROUND_W) * spread
    half_w = max(0.5 * rest_w * shape - 0.5 * smile_loss, 0.3 * geo.half_w)
    ratio = geo.half_w / half_w
    d = xs - cx
    inside = np.abs(d) <= half_w
    fade_w = CORNER_FADE * 2 * geo.half_w
    beyond = np.clip((np.abs(d) - half_w) / fade_w, 0.0, 1.0)
    corner_fade = 0.5 + 0.5 * np.cos(np.pi * beyond)
    # Columns between the corners stretch about the centre; beyond them the shift fades out.
    edge_shift = np.sign(d) * (geo.half_w - half_w)
    source_x = np.where(inside, cx + d * ratio, xs + edge_shift * corner_fade)

    def at(y: np.ndarray) -> np.ndarray:
        return np.interp(source_x, xs, y)

    top, ot, it, ib, ob, chin, bottom = (at(k) for k in c.knots())
    seam = at(geo.seam)
    shift = -at(relaxed) * corner_fade
    seam = seam + shift
    # The opening ends a little inside the corners and tapers to nothing there: the lips still
    # meet at the corners, so no dark wedge pokes out sideways.
    t = np.clip(1.0 - (d / (OPENING_W * half_w)) ** 2, 0.0, 1.0)
    size = openness * MAX_GAP * rest_w
    # The upper lip's edge is flatter than the lower one's, which rounds with the jaw.
    new_it = seam - UPPER_SHARE * size * t ** 0.45
    new_ib = seam + (1 - UPPER_SHARE) * size * t ** 0.8
    gap = new_ib - new_it
    # What the template showed between its lips (its teeth, say) stays, unstretched, attached to
    # the lips: the upper teeth with the upper lip, the bottom of the opening with the jaw.
    shown = np.minimum(np.maximum(ib - it, 0.0), gap)
    upper_t, lower_t = (it - ot), (ob - ib)
    pucker = 1.0 + 0.12 * max(-spread, 0.0)
    new_ot = new_it - upper_t * pucker
    new_ob = new_ib + lower_t * pucker
    jaw = (new_ib - ib) * corner_fade
    new_chin = chin + 0.9 * jaw
    curves = LipCurves(top, ot + (new_ot - ot) * corner_fade, it + (new_it - it) * corner_fade,
                       ib + (new_ib - ib) * corner_fade, ob + (new_ob - ob) * corner_fade, new_chin, bottom)
    return MouthTarget(curves, LipCurves(top, ot, it, ib, ob, chin, bottom), seam, cx, gap * corner_fade,
                       TEETH_SHARE * shown, (1 - TEETH_SHARE) * shown, source_x, half_w, corner_fade)
