"""Face tracking for templates: pick a landmark backend, track the face, cache the result."""

from __future__ import annotations

from engine.face.base import Box, FaceTrack, LandmarkBackend
from engine.face.tracker import track_frames
from engine.neural import require
from engine.settings import EngineSettings

__all__ = ["Box", "FaceTrack", "LandmarkBackend", "get_backend", "track_frames"]


def get_backend(settings: EngineSettings) -> LandmarkBackend:
    """The backend named by ``settings.face_backend``, imported lazily: torch and face-alignment (the ``neural``
    extra) only when asked for, so the default install runs without them."""
    if settings.face_backend == "face_alignment":
        require("the face_alignment face backend", ("torch", "face_alignment"), field="face_backend")
        from engine.face.fa_backend import FaceAlignmentBackend

        return FaceAlignmentBackend(settings)
    from engine.face.dlib_backend import DlibBackend

    return DlibBackend(min_face_px=settings.min_face_px)
