"""The weightless renderer: visemes drive a smooth warp of the lower face, and the newly opened
mouth is filled with a shaded cavity and teeth, feathered into the frame.

Only a region around the mouth and chin is touched; the displacement fades to exactly zero at
its border, so everything above the nose stays as the template has it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from ..face.regions import mouth_bounds, mouth_region, track_mouth_region
from ..frames import Region, read_region, write_region
from .base import RenderContext, Renderer
from .visemes import trajectory

GRID_STEP = 8  # the displacement field is smooth at this scale; interpolate between samples
MAX_GAP = 0.46  # inner-lip gap at full opening, as a fraction of mouth width
RIDGE = 0.05  # smoothing: close control points with opposite moves must not make the field ring
# Each moving landmark's share of the four motions (68-point indices). ``lower``: how far it follows
# the jaw down; ``upper``: how far it follows the upper lip up; ``side``: corner moves along the
# lips (spread/round); ``pucker``: lip thickening of rounded vowels. Jaw points fade towards the ears.
_MOVES = {
    # jaw contour
    3: (0.05, 0, 0, 0), 4: (0.21, 0, 0, 0), 5: (0.47, 0, 0, 0), 6: (0.74, 0, 0, 0), 7: (0.95, 0, 0, 0),
    8: (1.05, 0, 0, 0), 9: (0.95, 0, 0, 0), 10: (0.74, 0, 0, 0), 11: (0.47, 0, 0, 0), 12: (0.21, 0, 0, 0),
    13: (0.05, 0, 0, 0),
    # lower lip, outer and inner
    55: (0.55, 0, 0, 0), 56: (0.9, 0, 0, 1), 57: (1.0, 0, 0, 1), 58: (0.9, 0, 0, 1), 59: (0.55, 0, 0, 0),
    65: (0.9, 0, 0, 0), 66: (1.0, 0, 0, 0), 67: (0.9, 0, 0, 0),
    # upper lip, inner and outer
    61: (0, 0.85, 0, 0), 62: (0, 1.0, 0, 0), 63: (0, 0.85, 0, 0),
    50: (0, 0.5, 0, -1), 51: (0, 0.6, 0, -1), 52: (0, 0.5, 0, -1),
    # corners
    48: (0.35, 0, -1, 0), 60: (0.35, 0, -1, 0), 54: (0.35, 0, 1, 0), 64: (0.35, 0, 1, 0),
}
_MOVE_IDX = np.array(list(_MOVES), int)
_MOVE_W = np.array(list(_MOVES.values()), np.float32)
_ANCHORS = [0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35]


@dataclass(frozen=True)
class MouthFrame:
    """Geometry of one frame's mouth in a face-aligned basis (u along the lips, v towards the chin)."""

    lm: np.ndarray
    u: np.ndarray
    v: np.ndarray
    mouth_w: float
    face_h: float
    gap: float


def mouth_frame(lm: np.ndarray) -> MouthFrame:
    u = lm[54] - lm[48]
    mouth_w = float(np.linalg.norm(u)) or 1.0
    u = u / mouth_w
    v = np.array([-u[1], u[0]], np.float32)
    if np.dot(v, lm[8] - lm[33]) < 0:
        v = -v
    face_h = float(np.linalg.norm(lm[8] - lm[27]))
    return MouthFrame(lm, u, v, mouth_w, face_h, max(inner_gap(lm, v), 0.0))


def inner_gap(lm: np.ndarray, v: np.ndarray) -> float:
    """Distance between the inner lips along ``v`` (towards the chin), averaged over three pairs."""
    return float(np.mean([(lm[lo] - lm[up]) @ v for up, lo in ((61, 67), (62, 66), (63, 65))]))


def target_gap(mf: MouthFrame, openness: float) -> float:
    return openness * MAX_GAP * mf.mouth_w


def target_displacements(mf: MouthFrame, openness: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the landmarks that move and their displacements (pixels) for the wanted shape."""
    delta = target_gap(mf, openness) - mf.gap
    lower, upper = 0.8 * delta, 0.2 * delta
    side = (0.07 if spread > 0 else 0.1) * spread * mf.mouth_w
    # Rounded lips push forward: seen from the front the lips thicken a little.
    pucker = max(-spread, 0.0) * 0.05 * mf.mouth_w
    along_v = _MOVE_W @ np.array([lower, -upper, 0.0, pucker], np.float32)
    along_u = _MOVE_W[:, 2] * side
    return _MOVE_IDX, (np.outer(along_v, mf.v) + np.outer(along_u, mf.u)).astype(np.float32)


class ProceduralRenderer(Renderer):
    name = "procedural"

    def region(self, ctx: RenderContext) -> Region | None:
        """For video templates: the union of every frame's mouth region (photos move as a whole)."""
        t = ctx.template
        if t.kind != "video":
            return None
        return t.mouth_box or track_mouth_region(t.track.landmarks, t.width, t.height)

    def frames(self, ctx: RenderContext, region: Region | None = None) -> Iterator[np.ndarray]:
        traj = trajectory(ctx.speech, ctx.fps, ctx.n_frames)
        w, h = (region.width, region.height) if region else (ctx.template.width, ctx.template.height)
        for i, (frame, lm) in enumerate(ctx.template.frames(ctx.n_frames, ctx.workdir, region)):
            yield render_mouth_i420(frame, w, h, lm, float(traj.openness[i]), float(traj.spread[i]))
            if i % 25 == 0:
                ctx.progress("lipsync", i / ctx.n_frames)
        ctx.progress("lipsync", 1.0)


def render_mouth_i420(frame: np.ndarray, width: int, height: int, lm: np.ndarray, openness: float,
                      spread: float) -> np.ndarray:
    """``render_mouth`` on an I420 frame: only the mouth region goes through RGB and back."""
    r = mouth_region(lm, width, height)
    offset = np.array([r.x0, r.y0], np.float32)
    patch = render_mouth(read_region(frame, width, height, r), lm - offset, openness, spread)
    out = frame.copy()
    write_region(out, width, height, r, patch)
    return out


def render_mouth(frame: np.ndarray, lm: np.ndarray, openness: float, spread: float) -> np.ndarray:
    """One frame with the mouth set to ``openness``/``spread``; returns a new array."""
    mf = mouth_frame(lm.astype(np.float32))
    idx, disp = target_displacements(mf, openness, spread)
    h, w = frame.shape[:2]
    bx0, by0, bx1, by1 = mouth_bounds(lm)
    x0, y0, x1, y1 = int(max(0, bx0)), int(max(0, by0)), int(min(w, bx1)), int(min(h, by1))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return frame.copy()

    src_pts, dst_pts = lm[idx].astype(np.float64), (lm[idx] + disp).astype(np.float64)
    anchors = lm[_ANCHORS].astype(np.float64)
    below = lm[8] + 0.42 * mf.face_h * mf.v + np.outer([-0.6, -0.3, 0.0, 0.3, 0.6], mf.u * mf.mouth_w)
    fixed = np.concatenate([anchors, below])
    zeros = np.zeros((len(fixed), 2))
    sigma = 0.33 * mf.mouth_w

    gx = np.arange(x0, x1 + GRID_STEP, GRID_STEP, dtype=np.float64)
    gy = np.arange(y0, y1 + GRID_STEP, GRID_STEP, dtype=np.float64)
    cxs, cys = np.meshgrid(gx, gy)
    # Opening: interpolate the backward map at the (well separated) destination points.
    # Closing: the destinations coincide, so interpolate the forward field at the sources and
    # invert it with one fixed-point step.
    wanted = target_gap(mf, openness)
    if wanted >= mf.gap:
        back = _rbf(np.concatenate([dst_pts, fixed]), np.concatenate([-disp, zeros]), sigma)
        field = back(cxs, cys)
    else:
        fwd = _rbf(np.concatenate([src_pts, fixed]), np.concatenate([disp, zeros]), sigma)
        first = fwd(cxs, cys)
        field = -fwd(cxs - first[..., 0], cys - first[..., 1])
    field *= _edge_taper(len(gy), len(gx), border=3)[..., None]
    roi_w, roi_h = x1 - x0, y1 - y0
    full = cv2.resize(field.astype(np.float32), (len(gx) * GRID_STEP, len(gy) * GRID_STEP),
                      interpolation=cv2.INTER_LINEAR)[:roi_h, :roi_w]
    map_x = full[..., 0] + np.arange(x0, x1, dtype=np.float32)[None, :]
    map_y = full[..., 1] + np.arange(y0, y1, dtype=np.float32)[:, None]
    out = frame.copy()
    out[y0:y1, x0:x1] = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    new_lm = lm.astype(np.float32).copy()
    new_lm[idx] = dst_pts
    _paint_cavity(out, frame, lm.astype(np.float32), new_lm, mf)
    if wanted < mf.gap:
        _paint_closure(out, new_lm, 1.0 - wanted / mf.gap, mf.mouth_w)
    return out


def _rbf(ctrl: np.ndarray, values: np.ndarray, sigma: float):
    """Gaussian RBF interpolant of 2-D ``values`` given at ``ctrl``; returns f(xs, ys) → (..., 2)."""
    d2 = ((ctrl[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * sigma**2)) + RIDGE * np.eye(len(ctrl))
    weights = np.linalg.solve(kernel, values).astype(np.float32)
    c = ctrl.astype(np.float32)
    c2 = (c**2).sum(1)
    scale = np.float32(-0.5 / sigma**2)

    def evaluate(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
        d2 = (pts**2).sum(1)[:, None] + c2[None, :] - 2 * (pts @ c.T)
        return (np.exp(d2 * scale) @ weights).reshape(*xs.shape, 2)

    return evaluate


def _edge_taper(rows: int, cols: int, border: int) -> np.ndarray:
    """1 inside, falling smoothly to 0 on the outermost grid cells, so the ROI has no seam."""
    def ramp(n: int) -> np.ndarray:
        r = np.ones(n)
        k = min(border, n // 2)
        if k:
            edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, k + 1)[:-1])
            r[:k], r[n - k:] = edge, edge[::-1]
        return r
    return np.outer(ramp(rows), ramp(cols))


def _paint_cavity(out: np.ndarray, src: np.ndarray, old_lm: np.ndarray, lm: np.ndarray, mf: MouthFrame) -> None:
    """Fill the part of the opening that the template did not show: a dark mouth, with the
    template's own teeth carried along under the upper lip (or drawn ones if it showed none)."""
    inner = lm[60:68]
    gap = inner_gap(lm, mf.v)
    strength = float(np.clip((gap - mf.gap) / (0.04 * mf.mouth_w), 0.0, 1.0))
    if gap < 1.0 or strength <= 0.0:
        return
    pad = 4
    bx0, by0 = np.floor(np.minimum(inner.min(0), old_lm[60:68].min(0))).astype(int) - pad
    bx1, by1 = np.ceil(np.maximum(inner.max(0), old_lm[60:68].max(0))).astype(int) + pad
    h, w = out.shape[:2]
    bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
    if bx1 - bx0 < 3 or by1 - by0 < 3:
        return
    origin = np.array([bx0, by0], np.float32)
    size = (bx1 - bx0, by1 - by0)
    new_mask = _poly_mask(inner - origin, size)
    shift = lm[62] - old_lm[62]
    old_mask = _poly_mask(old_lm[60:68] - origin + shift, size)
    moved = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    old_inside = cv2.warpAffine(src[by0:by1, bx0:bx1], moved, size, borderMode=cv2.BORDER_REPLICATE)

    skin = src[int(lm[33, 1]):int(old_lm[51, 1]) + 1, int(old_lm[49, 0]):int(old_lm[53, 0]) + 1]
    lum = float(skin.mean()) if skin.size else 140.0
    cavity = _cavity_image(size, inner - origin, lum, gap, mf, draw_teeth=mf.gap < 0.06 * mf.mouth_w)
    keep = old_mask[..., None]
    fill = cavity * (1 - keep) + old_inside.astype(np.float32) * keep
    alpha = (new_mask * strength)[..., None]
    region = out[by0:by1, bx0:bx1].astype(np.float32)
    out[by0:by1, bx0:bx1] = np.clip(region * (1 - alpha) + fill * alpha, 0, 255).astype(np.uint8)


def _paint_closure(out: np.ndarray, lm: np.ndarray, amount: float, mouth_w: float) -> None:
    """Lips meeting over whatever the template showed between them (a smile's teeth, say).

    The warp alone cannot shut a mouth whose upper lip is raised: the inner-lip opening is drawn
    over with the upper and lower lip colours meeting at a soft, darker seam, ``amount`` of the way.
    """
    inner = lm[60:68]
    grow = max(1, round(0.03 * mouth_w))  # landmarks sit just inside the lip edge: cover it too
    bx0, by0 = np.floor(inner.min(0)).astype(int) - 2 - grow
    bx1, by1 = np.ceil(inner.max(0)).astype(int) + 3 + grow
    h, w = out.shape[:2]
    bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
    if bx1 - bx0 < 3 or by1 - by0 < 2 or amount <= 0.0:
        return
    origin = np.array([bx0, by0], np.float32)
    size = (bx1 - bx0, by1 - by0)
    upper = _mean_colour(out, np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]]))
    lower = _mean_colour(out, np.concatenate([lm[[54, 55, 56, 57, 58, 59, 48]], lm[[60, 67, 66, 65, 64]]]))
    ys, xs = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    top = np.interp(xs, inner[[0, 1, 2, 3, 4], 0], inner[[0, 1, 2, 3, 4], 1])
    bottom = np.interp(xs, inner[[0, 7, 6, 5, 4], 0], inner[[0, 7, 6, 5, 4], 1])
    t = np.clip((ys - top) / np.maximum(bottom - top, 1.0), 0.0, 1.0)[..., None]
    seam = 1.0 - 0.35 * np.exp(-(((t - 0.5) / 0.14) ** 2))
    fill = (upper * (1.0 - t) + lower * t) * seam
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(mask, [np.round((inner - origin) * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    alpha = (cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8) * amount)[..., None]
    region = out[by0:by1, bx0:bx1].astype(np.float32)
    out[by0:by1, bx0:bx1] = np.clip(region * (1 - alpha) + fill * alpha, 0, 255).astype(np.uint8)


def _mean_colour(image: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 255)
    return np.array(cv2.mean(image, mask=mask)[:3], np.float32)


def _poly_mask(poly: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased (sub-pixel vertices), slightly feathered 0..1 mask of a polygon."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.7)


def _cavity_image(size: tuple[int, int], inner: np.ndarray, lum: float, gap: float, mf: MouthFrame,
                  draw_teeth: bool) -> np.ndarray:
    """Dark oral cavity shaded towards the back, optional upper teeth, a hint of tongue."""
    bw, bh = size
    ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float32)
    cx, cy = inner[:, 0].mean(), inner[:, 1].mean()
    half_w = max((inner[4, 0] - inner[0, 0]) / 2, 1.0)
    half_h = max(gap / 2, 1.0)
    r = np.sqrt(((xs - cx) / half_w) ** 2 + ((ys - cy) / half_h) ** 2)
    light = float(np.clip(lum / 150.0, 0.5, 1.4))
    dark = np.array([30, 30, 62], np.float32) * light
    img = dark[None, None, :] * (0.55 + 0.6 * np.clip(r, 0, 1))[..., None]

    top = np.interp(xs, inner[[0, 1, 2, 3, 4], 0], inner[[0, 1, 2, 3, 4], 1])
    bottom = np.interp(xs, inner[[0, 7, 6, 5, 4], 0], inner[[0, 7, 6, 5, 4], 1])
    if draw_teeth:
        across = np.clip(1 - np.abs(xs - cx) / (0.8 * half_w), 0, 1) ** 0.5
        teeth_h = min(0.12 * mf.mouth_w, 0.4 * gap)
        upper = np.clip((top + teeth_h - ys) / 1.2, 0, 1) * (ys >= top - 1) * across
        shade = 0.78 + 0.22 * np.clip((ys - top) / max(teeth_h, 1), 0, 1)
        teeth = np.array([196, 205, 214], np.float32) * light**0.5 * shade[..., None]
        img = img * (1 - upper[..., None]) + teeth * upper[..., None]
    if gap > 0.2 * mf.mouth_w:
        tongue = np.array([70, 70, 150], np.float32) * light
        t = np.clip(1 - np.sqrt(((xs - cx) / (0.6 * half_w)) ** 2 + ((ys - bottom) / (0.35 * gap)) ** 2), 0, 1)
        t = np.clip(t * 1.6, 0, 1) * 0.6
        img = img * (1 - t[..., None]) + tongue[None, None, :] * t[..., None]
    return img
