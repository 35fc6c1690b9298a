"""Face tracking results and the landmark-backend interface.

Landmarks follow the 68-point iBUG layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
outer lips 48-59, inner lips 60-67) whatever backend produced them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JAW = slice(0, 17)
NOSE = slice(27, 36)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)


@dataclass(frozen=True)
class Box:
    left: float
    top: float
    right: float
    bottom: float

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, factor: float) -> Box:
        return Box(self.left * factor, self.top * factor, self.right * factor, self.bottom * factor)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not touch)."""
    inter = Box(max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom)).area
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


class LandmarkBackend(ABC):
    """Detects faces and places 68 landmarks on one BGR frame."""

    name: str = ""

    @abstractmethod
    def detect(self, frame_bgr: np.ndarray, near: Box | None = None) -> list[Box]:
        """All faces in the frame, largest first.

        ``near`` is where the tracked face was last seen. A backend that would have to upscale the
        whole frame to see a face that small may look only around it instead.
        """

    @abstractmethod
    def landmarks(self, frame_bgr: np.ndarray, box: Box) -> np.ndarray:
        """(68, 2) float32 pixel coordinates for the face in ``box``."""

    def confirm(self, frame_bgr: np.ndarray, box: Box) -> bool:
        """Whether a second, stronger look agrees that ``box`` holds a face.

        Only asked when a frame has several candidates, so a slow check costs little. Backends whose
        detector is already a CNN trust it.
        """
        return True


@dataclass
class FaceTrack:
    """Per-frame boxes (N, 4: left, top, right, bottom) and landmarks (N, 68, 2), temporally smoothed."""

    boxes: np.ndarray
    landmarks: np.ndarray
    width: int
    height: int
    fps: float
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.landmarks)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp, boxes=self.boxes, landmarks=self.landmarks,
            meta=np.array([self.width, self.height, self.fps], dtype=np.float64),
            notes=np.array(self.notes, dtype=object),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FaceTrack:
        with np.load(path, allow_pickle=True) as data:
            w, h, fps = data["meta"]
            return cls(data["boxes"], data["landmarks"], int(w), int(h), float(fps), tuple(data["notes"].tolist()))
