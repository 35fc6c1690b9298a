"""The weightless renderer: visemes set an absolute mouth shape, the template's own lips are
stretched onto it, and the opening between them is drawn from the face's own colours.

Work happens on a mouth-aligned canvas at a fixed working resolution (``mouth_space``), so small
and tilted faces get the same treatment as large level ones. Only a region around the mouth and
chin changes, and the change fades to exactly zero before its border, so everything above the
nose stays as the template has it.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from ..face.regions import mouth_bounds, mouth_region, track_mouth_region
from ..frames import Region, read_region, write_region
from .base import RenderContext, Renderer
from .expression import rest_width_ratio, speaking_level
from .mouth_cavity import paint_cavity
from .mouth_colours import MouthPalette, mouth_palette
from .mouth_shape import BOTTOM_ANCHOR, CORNER_FADE, MouthGeometry, MouthTarget, target_shape, template_geometry
from .mouth_space import mouth_space
from .visemes import trajectory

UPPER_KEEP, LOWER_SKIP = 0.45, 0.4  # of an open template's lips, the part sure to be lip (landmarks sit on teeth)
SEAM_DARK = 0.22  # how much darker the line where closed lips meet is
SEAM_WIDTH = 0.012  # its half-width, as a fraction of the mouth width


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
        relax = ctx.settings.mouth_smile_relax * speaking_level(traj.openness, ctx.fps)
        ratio = rest_width_ratio(ctx.template.track.landmarks)
        w, h = (region.width, region.height) if region else (ctx.template.width, ctx.template.height)
        for i, (frame, lm) in enumerate(ctx.template.frames(ctx.n_frames, ctx.workdir, region)):
            yield render_mouth_i420(frame, w, h, lm, float(traj.openness[i]), float(traj.spread[i]),
                                    float(relax[i]), ratio)
            if i % 25 == 0:
                ctx.progress("lipsync", i / ctx.n_frames)
        ctx.progress("lipsync", 1.0)


def render_mouth_i420(frame: np.ndarray, width: int, height: int, lm: np.ndarray, openness: float,
                      spread: float, relax: float = 0.0, rest_ratio: float | None = None) -> np.ndarray:
    """``render_mouth`` on an I420 frame: only the mouth region goes through RGB and back."""
    r = mouth_region(lm, width, height)
    offset = np.array([r.x0, r.y0], np.float32)
    patch = render_mouth(read_region(frame, width, height, r), lm - offset, openness, spread, relax, rest_ratio)
    out = frame.copy()
    write_region(out, width, height, r, patch)
    return out


def render_mouth(frame: np.ndarray, lm: np.ndarray, openness: float, spread: float, relax: float = 0.0,
                 rest_ratio: float | None = None) -> np.ndarray:
    """A copy of ``frame`` (BGR) whose mouth has the absolute shape ``openness`` (0 shut .. 1 wide),
    ``spread`` (-1 rounded .. 1 spread), with ``relax`` (0..1) of the template's smile let go.

    ``rest_ratio`` is the template's rest mouth width over its eye-corner distance; without it
    the frame's own mouth width is the rest width.
    """
    lm = np.asarray(lm, np.float32)
    h, w = frame.shape[:2]
    bx0, by0, bx1, by1 = mouth_bounds(lm)
    wx0, wy0, wx1, wy1 = _work_box(lm)
    box = (max(bx0, wx0, 0.0), max(by0, wy0, 0.0), min(bx1, wx1, float(w)), min(by1, wy1, float(h)))
    if box[2] - box[0] < 8 or box[3] - box[1] < 8:
        return frame.copy()
    space = mouth_space(lm, box)
    canvas = space.lift(frame)
    clm = space.to_canvas(lm)
    geo = template_geometry(clm, canvas.shape[1])
    mouth_w = 2 * geo.half_w
    rest_w = rest_ratio * float(np.hypot(*(clm[45] - clm[36]))) if rest_ratio else mouth_w
    target = target_shape(geo, rest_w, openness, spread, float(np.clip(relax, 0.0, 1.0)))
    palette = _palette(canvas, geo)
    out = _warp(canvas, geo, target)
    _shade_seam(out, target, mouth_w)
    paint_cavity(out, target, geo.cx, mouth_w, palette)
    return space.paste(frame, canvas, out)


def _work_box(lm: np.ndarray) -> tuple[float, float, float, float]:
    """The part of the face a mouth edit can reach: corner to corner plus the fade beyond them,
    from under the nose to the anchor below the chin (as ``mouth_shape`` places them)."""
    u = lm[54] - lm[48]
    mouth_w = float(np.hypot(*u)) or 1.0
    u = u / mouth_w
    v = np.array([-u[1], u[0]])
    centre = (lm[48] + lm[54]) / 2
    face_h = float(np.hypot(*(lm[8] - lm[27])))
    up = max(float((centre - lm[33]) @ v), 0.0) + 2.0
    down = max(float((lm[8] - centre) @ v), 0.0) + (BOTTOM_ANCHOR + 0.04) * face_h
    side = (0.5 + CORNER_FADE + 0.1) * mouth_w
    corners = np.array([centre + a * side * u + b * v for a in (-1, 1) for b in (-up, down)])
    return (*corners.min(0), *corners.max(0))


def _warp(canvas: np.ndarray, geo: MouthGeometry, target: MouthTarget) -> np.ndarray:
    """Backward map, column by column: each band between two wanted edges (skin, upper lip, opening,
    lower lip, chin) samples the matching band of the template, so lips stay the template's lips."""
    c, t = target.curves.knots(), target.source.knots()
    lip_top, lip_bottom = _lip_edges(t, 2 * geo.half_w)
    # Bands, top to bottom: skin, upper lip, what stays of the template's opening under the upper
    # lip, the new opening (painted over later), what stays above the lower lip, lower lip, chin, skin.
    dst = np.maximum.accumulate(np.stack([c[0], c[1], c[2], c[2] + target.kept_top, c[3] - target.kept_bottom,
                                          c[3], c[4], c[5], c[6]]), axis=0)
    kt, kb = t[2] + target.kept_top, t[3] - target.kept_bottom
    # Each band's source interval: a band may start where the previous one did not end (the
    # uncertain inner strip of an open template's lips is skipped).
    src_from = np.stack([t[0], t[1], t[2], kt, kb, lip_bottom, t[4], t[5]])
    src_to = np.stack([t[1], lip_top, kt, kb, t[3], t[4], t[5], t[6]])
    h = canvas.shape[0]
    moving = np.nonzero(np.abs(c - t).max(0) + np.abs(target.source_x - geo.xs) > 0.01)[0]
    if len(moving) == 0:
        return canvas.copy()
    x0, x1 = int(moving[0]), int(moving[-1]) + 1
    y0 = max(int(np.floor(dst[0, x0:x1].min())), 0)
    y1 = min(int(np.ceil(dst[-1, x0:x1].max())) + 1, h)
    ys = np.arange(y0, y1, dtype=np.float32)
    # Per column, a piecewise-linear map with a jump allowed between bands: each knot appears
    # twice, once as the end of a band and once as the start of the next.
    knots = np.repeat(dst, 2, axis=0)[1:-1]
    values = np.empty_like(knots)
    values[0::2], values[1::2] = src_from, src_to
    # All columns in one np.interp call: column j's knots and rows are moved to j * stride.
    stride = 3.0 * h
    lane = np.arange(x1 - x0, dtype=np.float64) * stride
    xp = (np.clip(knots[:, x0:x1], -h, 2 * h) + lane).T.ravel()
    query = (ys[:, None] + lane).T.ravel()
    mapped = np.interp(query, xp, values[:, x0:x1].T.ravel()).reshape(x1 - x0, -1).T
    shift_y = (mapped - ys[:, None]).astype(np.float32)
    # The corners' sideways travel is full across the lips and fades out towards nose and chin.
    d = dst[:, x0:x1]
    yc = ys[:, None]
    up = np.clip((yc - d[0]) / np.maximum(d[1] - d[0], 1.0), 0, 1)
    down = np.clip((d[-1] - yc) / np.maximum(d[-1] - d[6], 1.0), 0, 1)
    shift_x = ((target.source_x[x0:x1] - geo.xs[x0:x1]) * np.minimum(up, down)).astype(np.float32)
    gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), ys)
    out = canvas.copy()
    out[y0:y1, x0:x1] = cv2.remap(canvas, gx + shift_x, gy + shift_y, cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
    return out


def _lip_edges(src: np.ndarray, mouth_w: float) -> tuple[np.ndarray, np.ndarray]:
    """Inner edges of the template's lip texture. Inner-lip landmarks of an open mouth often sit
    on the teeth, so from an open template only the outer part of each lip is taken (and
    stretched); a closed template's lips are taken whole."""
    outer_top, inner_top, inner_bottom, outer_bottom = src[1], src[2], src[3], src[4]
    open_ = np.clip((inner_bottom - inner_top) / (0.04 * mouth_w), 0.0, 1.0)
    keep = 1.0 - (1.0 - UPPER_KEEP) * open_
    skip = LOWER_SKIP * open_
    return (outer_top + keep * (inner_top - outer_top),
            inner_bottom + skip * (outer_bottom - inner_bottom))


def _shade_seam(img: np.ndarray, target: MouthTarget, mouth_w: float) -> None:
    """Lips that (nearly) meet do so at a soft, continuous, slightly darker line."""
    closed = np.clip(1.0 - target.gap / (0.03 * mouth_w), 0.0, 1.0)
    along = np.clip(1.0 - ((np.arange(img.shape[1]) - target.cx) / target.half_w) ** 2, 0.0, 1.0)
    strength = SEAM_DARK * closed * np.sqrt(along)
    cols = np.nonzero(strength > 0.01)[0]
    if len(cols) == 0:
        return
    sigma = max(SEAM_WIDTH * mouth_w, 1.0)
    centre = (target.curves.inner_top + target.curves.inner_bottom) / 2
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0 = max(int(np.floor(centre[x0:x1].min() - 3 * sigma)), 0)
    y1 = min(int(np.ceil(centre[x0:x1].max() + 3 * sigma)) + 1, img.shape[0])
    if y1 <= y0:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    line = np.exp(-(((ys - centre[None, x0:x1]) / sigma) ** 2)) * strength[None, x0:x1]
    region = img[y0:y1, x0:x1].astype(np.float32) * (1.0 - line[..., None])
    img[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def _palette(canvas: np.ndarray, geo: MouthGeometry) -> MouthPalette:
    """Lip and skin colours of the template, from the middle of the lips and the skin above them."""
    c = geo.curves
    x0, x1 = int(max(geo.cx - 0.6 * geo.half_w, 0)), int(min(geo.cx + 0.6 * geo.half_w, canvas.shape[1]))
    ys = np.arange(canvas.shape[0], dtype=np.float32)[:, None]
    sl = slice(x0, max(x1, x0 + 1))
    inner_top, inner_bottom = _lip_edges(c.knots()[:, sl], 2 * geo.half_w)
    upper = (ys > c.outer_top[sl] + 1) & (ys < inner_top)
    lower = (ys > inner_bottom) & (ys < c.outer_bottom[sl] - 1)
    skin = (ys > c.top[sl]) & (ys < c.outer_top[sl] - 0.04 * geo.half_w)
    band = canvas[:, sl].reshape(-1, 3).astype(np.float32)
    lips = band[(upper | lower).ravel()]
    sk = band[skin.ravel()]
    lip = lips.mean(0) if len(lips) else np.array([90, 90, 150], np.float32)
    skin_c = sk.mean(0) if len(sk) else lip
    return mouth_palette(lip, skin_c)
