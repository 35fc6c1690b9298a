"""face-alignment backend: S3FD detector plus the 2D FAN landmark network (68 iBUG points).

The package downloads its weights on first use; the engine must never do that, so the weight files
are looked up first and a missing one is a ``MissingWeights`` error that says where to put it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np

from engine.errors import MissingWeights
from engine.face.base import Box, LandmarkBackend
from engine.settings import EngineSettings

# S3FD on CPU costs roughly quadratically in frame size; faces stay well above its ~15 px minimum here.
_DETECT_LONG_SIDE = 640

_lock = threading.Lock()
_instances: dict[tuple[str, str, str], Any] = {}


def weight_urls() -> dict[str, str]:
    """What the package itself would download, from its own constants (so a version bump stays right)."""
    from face_alignment.api import models_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls

    return {"fan": models_urls["2DFAN-4"], "s3fd": sfd_urls["s3fd"]}


def weight_files() -> dict[str, str]:
    """File names expected on disk: the basenames of :func:`weight_urls`, as torch.hub caches them."""
    return {key: Path(urlparse(url).path).name for key, url in weight_urls().items()}


def hub_checkpoints_dir() -> Path:
    """Where face-alignment caches downloads: ``torch.hub.get_dir()/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def locate_weights(settings: EngineSettings) -> dict[str, Path]:
    """Paths of the FAN and S3FD weights, or ``MissingWeights`` naming every file still needed."""
    urls = weight_urls()
    names = weight_files()
    dirs = [d for d in (settings.face_alignment_dir, hub_checkpoints_dir()) if d is not None]
    found: dict[str, Path] = {}
    for key, name in names.items():
        for d in dirs:
            if (Path(d) / name).is_file():
                found[key] = Path(d) / name
                break
    missing = [key for key in names if key not in found]
    if missing:
        where = " or ".join(str(d) for d in dirs)
        files = ", ".join(f"{names[key]} ({urls[key]})" for key in missing)
        raise MissingWeights(
            f"the face_alignment face backend needs {files}, which are not in {where}. The engine never "
            f"downloads weights: fetch them yourself and put them in {dirs[0]} (or point "
            "ENGINE_FACE_ALIGNMENT_DIR at the folder holding them), or set ENGINE_FACE_BACKEND=dlib",
            field="face_backend",
        )
    return found


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _build(fan_path: Path, s3fd_path: Path, device: str) -> Any:
    import face_alignment
    import torch
    from face_alignment.models import FAN

    class _LocalFaceAlignment(face_alignment.FaceAlignment):
        """FaceAlignment whose FAN comes from a given file instead of the package's download helper."""

        def _load_native(self, network_name: str, network_size: int, device: str, dtype: Any) -> Any:
            net = FAN(network_size)
            net.load_state_dict(torch.load(fan_path, map_location=device, weights_only=True))
            net.to(device, dtype=dtype)
            net.eval()
            return net

    return _LocalFaceAlignment(
        face_alignment.LandmarksType.TWO_D,
        device=device,
        # Test-time flipping doubles the cost; worth it only on a GPU.
        flip_input=device.startswith("cuda"),
        face_detector="sfd",
        face_detector_kwargs={"path_to_detector": str(s3fd_path)},
        # torch.compile needs a compiler toolchain, writes a cache under ~/.cache and gains little
        # for one crop at a time.
        compile=False,
    )


class FaceAlignmentBackend(LandmarkBackend):
    """Heavier, more accurate landmarks (FAN); practical on a GPU, slow (~0.1-0.3 s/frame) on CPU."""

    name = "face_alignment"

    def __init__(self, settings: EngineSettings) -> None:
        paths = locate_weights(settings)
        self.device = resolve_device(settings.device)
        key = (str(paths["fan"]), str(paths["s3fd"]), self.device)
        with _lock:
            if key not in _instances:
                _instances[key] = _build(paths["fan"], paths["s3fd"], self.device)
            self._fa = _instances[key]

    def detect(self, frame_bgr: np.ndarray, near: Box | None = None) -> list[Box]:
        rgb = _to_rgb(frame_bgr)
        h, w = rgb.shape[:2]
        scale = min(1.0, _DETECT_LONG_SIDE / max(h, w))
        if scale < 1.0:
            rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        found = self._fa.face_detector.detect_from_image(rgb)
        boxes = [Box(*(float(v) / scale for v in d[:4])) for d in found]
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def landmarks(self, frame_bgr: np.ndarray, box: Box) -> np.ndarray:
        # float64: face_alignment assigns these into torch tensors, which rejects numpy.float32 scalars.
        face = np.array([box.left, box.top, box.right, box.bottom, 1.0], dtype=np.float64)
        result = self._fa.get_landmarks_from_image(_to_rgb(frame_bgr), detected_faces=[face])
        return np.asarray(result[0], dtype=np.float32)[:, :2]


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(frame[..., ::-1])
