"""dlib backend: HOG frontal-face detector plus the 68-point iBUG shape predictor.

Both models work offline: HOG is built into dlib and the predictor ships inside the
``face_recognition_models`` wheel. That package's ``__init__`` imports ``pkg_resources`` (gone from
recent setuptools), so the file is located through the import system without importing it.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import MissingWeights
from engine.face.base import Box, LandmarkBackend
from engine.face.verify import CnnVerifier

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# HOG runs on a frame whose longer side is about this long: ~25 ms on 2 cores, faces >= ~80 px found.
_DETECT_LONG_SIDE = 640
# dlib's frontal detector scans an 80x80 window; faces smaller than this at detection scale are missed.
_HOG_WINDOW_PX = 80
# A second, finer pass looks for faces down to this fraction of min_face_px, so that a small face is
# reported as "too small" rather than "not found".
_SMALL_FACE_FRACTION = 0.6
# Upper bound on the finer pass (pixels at detection scale): 1080p upscaled 2x, about 0.7 s on
# 2 cores, so a 40 px face in a full-HD photo is still found and a 4K frame cannot take seconds.
_MAX_FINE_PIXELS = 8_300_000
# Re-detecting a tracked face that the coarse pass could not see (its box under this many HOG
# windows at coarse scale) searches only a window this many face sizes around it, with the face
# scaled to _NEAR_FACE_PX: a small face in a long video costs milliseconds per re-detection.
_NEAR_SEARCH_BELOW = 1.2
_NEAR_REACH = 1.0
_NEAR_FACE_PX = 120

# The shape predictor samples pixel pairs relative to the face; on a face much smaller than the
# ones it was trained on those samples blur together, so small faces are fitted on an upscaled crop
# in which the face is about this tall.
_FIT_FACE_PX = 120
# Context kept around the box when cropping for a fit (fraction of the box per side).
_FIT_MARGIN = 0.35

_load_lock = threading.Lock()
# The HOG detector object is not documented as safe for concurrent calls; the shape predictor is.
_detect_lock = threading.Lock()
_models: tuple[Any, Any] | None = None


def predictor_path() -> Path:
    """Path of the 68-point predictor inside the installed face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingWeights(
            f"the dlib face backend needs {PREDICTOR_FILE} from the face-recognition-models package, "
            "which is not installed (pip install face-recognition-models)"
        )
    path = Path(locations[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise MissingWeights(f"{path} is missing; reinstall face-recognition-models")
    return path


def _load_models() -> tuple[Any, Any]:
    """The HOG detector and shape predictor, loaded once per process (about 1-2 s)."""
    global _models
    with _load_lock:
        if _models is None:
            import dlib

            _models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path())))
        return _models


def _to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


class DlibBackend(LandmarkBackend):
    """Fast CPU backend: ~25 ms per detection on a 720p frame, ~3 ms per landmark fit."""

    name = "dlib"

    def __init__(self, *, min_face_px: int = 40) -> None:
        self.min_face_px = min_face_px
        self._detector, self._predictor = _load_models()
        self._verifier: CnnVerifier | None = None

    def confirm(self, frame_bgr: np.ndarray, box: Box) -> bool:
        if self._verifier is None:
            self._verifier = CnnVerifier(predictor_path().parent)
        return self._verifier.is_face(frame_bgr, box)

    def detect(self, frame_bgr: np.ndarray, near: Box | None = None) -> list[Box]:
        gray = _to_gray(frame_bgr)
        h, w = gray.shape[:2]
        coarse = _DETECT_LONG_SIDE / max(h, w)
        if near is not None and near.height * coarse < _NEAR_SEARCH_BELOW * _HOG_WINDOW_PX:
            return self._detect_near(gray, near)
        boxes = self._detect_at(gray, coarse)
        if not boxes:
            fine = max(coarse, _HOG_WINDOW_PX / (_SMALL_FACE_FRACTION * self.min_face_px))
            fine = min(fine, math.sqrt(_MAX_FINE_PIXELS / (h * w)))
            if fine > coarse * 1.25:
                boxes = self._detect_at(gray, fine)
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def _detect_near(self, gray: np.ndarray, near: Box) -> list[Box]:
        """A small face already being tracked: search a window around it, upscaled, not the whole frame."""
        h, w = gray.shape[:2]
        reach = _NEAR_REACH * max(near.width, near.height)
        x0, y0 = max(0, math.floor(near.left - reach)), max(0, math.floor(near.top - reach))
        x1, y1 = min(w, math.ceil(near.right + reach)), min(h, math.ceil(near.bottom + reach))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return []
        scale = _NEAR_FACE_PX / max(near.height, 1.0)
        boxes = self._detect_at(gray[y0:y1, x0:x1], scale)
        found = [Box(b.left + x0, b.top + y0, b.right + x0, b.bottom + y0) for b in boxes]
        return sorted(found, key=lambda b: b.area, reverse=True)

    def _detect_at(self, gray: np.ndarray, scale: float) -> list[Box]:
        h, w = gray.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(gray, size, interpolation=interpolation)
        with _detect_lock:
            rects = self._detector(small, 0)
        # dlib rectangles are inclusive; +1 makes right/bottom exclusive like the rest of the engine.
        return [
            Box(r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale)
            for r in rects
        ]

    def landmarks(self, frame_bgr: np.ndarray, box: Box) -> np.ndarray:
        scale = _FIT_FACE_PX / max(box.height, 1.0)
        if scale <= 1.25:
            return self._fit(frame_bgr, box)
        # Crop with a margin, upscale, fit there and map back (the crop's origin and scale).
        margin = _FIT_MARGIN * max(box.width, box.height)
        h, w = frame_bgr.shape[:2]
        x0, y0 = max(0, math.floor(box.left - margin)), max(0, math.floor(box.top - margin))
        x1, y1 = min(w, math.ceil(box.right + margin)), min(h, math.ceil(box.bottom + margin))
        crop = frame_bgr[y0:y1, x0:x1]
        if crop.size == 0:
            return self._fit(frame_bgr, box)
        big = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        local = Box(box.left - x0, box.top - y0, box.right - x0, box.bottom - y0).scaled(scale)
        points = self._fit(big, local)
        # Pixel centres: a point at p in the upscaled crop sat at (p + 0.5) / scale - 0.5 in the crop.
        return ((points + 0.5) / scale - 0.5 + np.array([x0, y0], np.float32)).astype(np.float32)

    def _fit(self, frame_bgr: np.ndarray, box: Box) -> np.ndarray:
        import dlib

        # The predictor reads single pixels as (r + g + b) / 3, so BGR order is harmless and no
        # full-frame conversion is needed.
        image = np.ascontiguousarray(frame_bgr, dtype=np.uint8)
        rect = dlib.rectangle(round(box.left), round(box.top), round(box.right) - 1, round(box.bottom) - 1)
        shape = self._predictor(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
