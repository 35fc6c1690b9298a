"""Offline face tracking over a whole template: detect now and then, track in between, smooth.

Detection is the expensive step (HOG/S3FD over the frame), fitting landmarks inside a known box is
cheap, so frames between detections reuse the previous frame's landmarks to place the box. The box
is rebuilt in the detector's own convention (learned at the last detection), because the landmark
models were trained on detector boxes and drift when fed boxes of another shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from engine.errors import CorruptMedia, FaceTooSmall, NoFace
from engine.face.base import Box, FaceTrack, LandmarkBackend, iou

# Jaw, brows, nose and eyes: rigid enough to define where the face is.
STABLE = slice(0, 48)
LIPS = slice(48, 68)

# Zero-phase Gaussian smoothing along time, in seconds (1.5 and 0.7 frames at 25 fps). Lips get
# less so that the template's own mouth movement survives.
STABLE_SIGMA_S = 0.06
LIPS_SIGMA_S = 0.028

# More missing frames than this and interpolated landmarks would be invented, not filled in.
MAX_MISSING_FRACTION = 0.2

# Tracking is judged lost when the face scale changes or the face moves this much between frames...
_MAX_SCALE_CHANGE = 1.25
_MAX_JUMP = 0.5
# ...or when the face patch no longer resembles the one seen at the last detection (NCC).
_MIN_SIMILARITY = 0.4
# Refit once in a box centred on the new landmarks when the face moved more than this (of its scale).
_REFIT_SHIFT = 0.05
_PATCH_PX = 24
# Candidates overlapping this much are the same place in the frame, judged once; at most this many
# places are remembered, so a crowd costs one look per face per detection and no more memory.
_SAME_PLACE = 0.5
_MAX_VERDICTS = 32


@dataclass(frozen=True)
class _Calibration:
    """The detector's box expressed in units of the landmark frame (centre and RMS radius)."""

    dx: float
    dy: float
    w: float
    h: float

    @classmethod
    def fit(cls, box: Box, lm: np.ndarray) -> _Calibration:
        (cx, cy), s = _frame_of(lm)
        bx, by = (box.left + box.right) / 2, (box.top + box.bottom) / 2
        return cls((bx - cx) / s, (by - cy) / s, box.width / s, box.height / s)

    def box_for(self, lm: np.ndarray) -> Box:
        (cx, cy), s = _frame_of(lm)
        x, y, w, h = cx + self.dx * s, cy + self.dy * s, self.w * s, self.h * s
        return Box(x - w / 2, y - h / 2, x + w / 2, y + h / 2)


@dataclass
class _State:
    landmarks: np.ndarray
    calibration: _Calibration
    reference: np.ndarray


def _frame_of(lm: np.ndarray) -> tuple[np.ndarray, float]:
    pts = lm[STABLE]
    centre = pts.mean(axis=0)
    radius = float(np.sqrt(((pts - centre) ** 2).sum(axis=1).mean()))
    return centre, max(radius, 1e-3)


def _patch(frame: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """A small normalised gray patch of the face, to tell a tracked face from whatever is left."""
    (cx, cy), s = _frame_of(lm)
    half = max(2, round(1.2 * s))
    x0, y0, x1, y1 = round(cx) - half, round(cy) - half, round(cx) + half, round(cy) + half
    h, w = frame.shape[:2]
    crop = frame[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)]
    if crop.size == 0:
        return np.zeros((_PATCH_PX, _PATCH_PX), np.float32)
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_REPLICATE)
    if crop.ndim == 3:
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(crop, (_PATCH_PX, _PATCH_PX), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 1e-6 else small



class _Tracker:
    def __init__(self, backend: LandmarkBackend) -> None:
        self.backend = backend
        self.max_faces = 0
        # Second opinions already given, by place in the frame: a template's false face (a patch on
        # a jacket, say) sits still, so one look at it is enough for the whole template.
        self._verdicts: list[tuple[Box, bool]] = []

    def detect(self, frame: np.ndarray, previous: _State | None) -> _State | None:
        expected = None if previous is None else previous.calibration.box_for(previous.landmarks)
        boxes = self.backend.detect(frame, near=expected)
        if not boxes:
            return None
        faces = self._faces(frame, boxes)
        self.max_faces = max(self.max_faces, len(faces))
        # With no candidate confirmed the detector's own best guess is still used, as before.
        box = faces[0] if faces else boxes[0]
        if expected is not None:
            # Stay on the face being tracked even if another one has become larger.
            overlap = max(boxes, key=lambda b: iou(b, expected))
            if iou(overlap, expected) > 0.3:
                box = overlap
        lm = self.backend.landmarks(frame, box)
        return _State(lm, _Calibration.fit(box, lm), _patch(frame, lm))

    def _faces(self, frame: np.ndarray, boxes: list[Box]) -> list[Box]:
        """The candidates a second look confirms; a lone candidate needs none (nothing to choose or count)."""
        if len(boxes) == 1:
            return boxes
        return [box for box in boxes if self._confirmed(frame, box)]

    def _confirmed(self, frame: np.ndarray, box: Box) -> bool:
        for seen, verdict in self._verdicts:
            if iou(seen, box) > _SAME_PLACE:
                return verdict
        verdict = self.backend.confirm(frame, box)
        if len(self._verdicts) < _MAX_VERDICTS:
            self._verdicts.append((box, verdict))
        return verdict

    def follow(self, frame: np.ndarray, previous: _State) -> _State | None:
        """Landmarks fitted in the box the previous frame implies, or None when the face looks lost."""
        calib = previous.calibration
        lm = self.backend.landmarks(frame, calib.box_for(previous.landmarks))
        (c0, s0), (c1, s1) = _frame_of(previous.landmarks), _frame_of(lm)
        if np.linalg.norm(c1 - c0) > _REFIT_SHIFT * s0:
            lm = self.backend.landmarks(frame, calib.box_for(lm))
            c1, s1 = _frame_of(lm)
        if (
            not 1 / _MAX_SCALE_CHANGE <= s1 / s0 <= _MAX_SCALE_CHANGE
            or np.linalg.norm(c1 - c0) > _MAX_JUMP * s0
        ):
            return None
        if float((_patch(frame, lm) * previous.reference).sum()) < _MIN_SIMILARITY:
            return None
        return _State(lm, calib, previous.reference)


def track_frames(
    frames: Iterable[np.ndarray],
    backend: LandmarkBackend,
    *,
    fps: float,
    min_face_px: int,
    detect_every: int = 8,
) -> FaceTrack:
    """Track the main face of a template through every frame (BGR, uint8) and smooth the result.

    Raises ``NoFace`` when no frame, or too many frames, show a face and ``FaceTooSmall`` when the
    face (brows to chin) is shorter than ``min_face_px``. Returned boxes are the landmarks' bounds.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    detect_every = max(1, detect_every)
    tracker = _Tracker(backend)
    state: _State | None = None
    since_detect = 0
    found: list[np.ndarray | None] = []
    size: tuple[int, int] | None = None
    for index, frame in enumerate(frames):
        shape = (frame.shape[1], frame.shape[0])
        if size is None:
            size = shape
        elif shape != size:
            raise CorruptMedia(
                f"frame {index} of the template is {shape[0]}x{shape[1]}, not {size[0]}x{size[1]}"
            )
        if state is None:
            tracked, since_detect = tracker.detect(frame, None), 0
        elif since_detect + 1 >= detect_every:
            # A scheduled re-detection that misses (a turned head, say) falls back on tracking.
            tracked, since_detect = tracker.detect(frame, state) or tracker.follow(frame, state), 0
        else:
            tracked, since_detect = tracker.follow(frame, state), since_detect + 1
            if tracked is None:
                tracked, since_detect = tracker.detect(frame, state), 0
        state = tracked
        found.append(None if tracked is None else tracked.landmarks)
    if size is None:
        raise CorruptMedia("the template has no video frames")

    notes: list[str] = []
    if tracker.max_faces > 1:
        notes.append(f"{tracker.max_faces} faces found in the template; using the largest")
    landmarks, missing = _fill_missing(found)
    landmarks = smooth_landmarks(landmarks, fps)
    boxes = boxes_from_landmarks(landmarks)

    height = float(np.median(boxes[:, 3] - boxes[:, 1]))
    if height < min_face_px:
        raise FaceTooSmall(too_small_message(height, min_face_px, size))
    if missing:
        ranges = _ranges(missing)
        if len(missing) > MAX_MISSING_FRACTION * len(found):
            raise NoFace(
                f"no face in frames {ranges} (of {len(found)}); use a template where the face is visible "
                "throughout"
            )
        notes.append(f"no face in frames {ranges} (of {len(found)}); filled in from the neighbouring frames")
    return FaceTrack(boxes, landmarks, size[0], size[1], float(fps), tuple(notes))


def too_small_message(height: float, min_face_px: int, size: tuple[int, int]) -> str:
    """What is wrong and the size that would do: the same framing, scaled until the face is big enough."""
    factor = min_face_px / max(height, 1.0)
    width, tall = (math.ceil(side * factor / 10) * 10 for side in size)
    return (
        f"the face is {round(height)} px from brow to chin; at least {min_face_px} px is needed. "
        f"Use the same picture at {width}x{tall} px or larger ({factor:.1f}x), or one framed closer to the face"
    )


def _fill_missing(found: list[np.ndarray | None]) -> tuple[np.ndarray, list[int]]:
    """Interpolate landmarks over frames without a face (held constant before the first/after the last)."""
    missing = [i for i, lm in enumerate(found) if lm is None]
    present = [i for i, lm in enumerate(found) if lm is not None]
    if not present:
        raise NoFace(f"no face found in frames {_ranges(missing)} of the template")
    known = np.stack([found[i] for i in present]).astype(np.float32)
    if not missing:
        return known, []
    flat = known.reshape(len(present), -1)
    filled = np.empty((len(found), flat.shape[1]), np.float32)
    for column in range(flat.shape[1]):
        filled[:, column] = np.interp(np.arange(len(found)), present, flat[:, column])
    return filled.reshape(len(found), 68, 2), missing


def smooth_landmarks(landmarks: np.ndarray, fps: float) -> np.ndarray:
    """Zero-phase temporal smoothing: the whole face strongly, the lips' motion within it lightly.

    Lips are smoothed relative to the face's centre and then put back on the strongly smoothed
    centre, so they move with the face and keep their own articulation.
    """
    stable_sigma, lips_sigma = STABLE_SIGMA_S * fps, LIPS_SIGMA_S * fps
    out = gaussian_filter1d(landmarks, stable_sigma, axis=0, mode="nearest")
    centre = landmarks[:, STABLE].mean(axis=1, keepdims=True)
    smooth_centre = out[:, STABLE].mean(axis=1, keepdims=True)
    lips = gaussian_filter1d(landmarks[:, LIPS] - centre, lips_sigma, axis=0, mode="nearest")
    out[:, LIPS] = smooth_centre + lips
    return out.astype(np.float32)


def boxes_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(N, 4) left, top, right, bottom around jaw, brows, nose and eyes (the lips lie inside)."""
    pts = landmarks[:, STABLE]
    return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1).astype(np.float32)


def _ranges(indices: list[int], limit: int = 8) -> str:
    spans: list[tuple[int, int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], i)
        else:
            spans.append((i, i))
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans[:limit])
    return text + (f" and {len(spans) - limit} more" if len(spans) > limit else "")
