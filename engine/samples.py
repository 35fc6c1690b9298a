"""Sample avatars built at setup time from a real face photo that ships in the scikit-image wheel.

``skimage.data.astronaut()`` is NASA's portrait of Eileen Collins (public domain). From it we make
a still-photo avatar and a 720p25 template video of the same photo with natural motion.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from .animate import LivingPhoto
from .avatars import Avatar, AvatarStore
from .errors import UnknownAvatar
from .face import get_backend
from .settings import EngineSettings
from .video import VideoWriter

PHOTO_ID = "astronaut-photo"
VIDEO_ID = "astronaut"
VIDEO_SECONDS = 8.0
VIDEO_FPS = 25.0


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def astronaut_720p() -> np.ndarray:
    """The portrait scaled to fill a 1280x720 frame: head and shoulders, face about 230 px tall."""
    photo = cv2.resize(astronaut_bgr(), (1280, 1280), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(photo[:720])


def write_template_video(out: Path, settings: EngineSettings, seconds: float = VIDEO_SECONDS,
                         fps: float = VIDEO_FPS) -> Path:
    """The 720p still animated (sway + blinks) into a short template video."""
    still = astronaut_720p()
    backend = get_backend(settings)
    boxes = backend.detect(still)
    landmarks = backend.landmarks(still, boxes[0])
    photo = LivingPhoto(still, landmarks, fps, seed=11)
    with VideoWriter(out, width=still.shape[1], height=still.shape[0], fps=fps, audio=None, crf=16,
                     pix_fmt="yuv420p") as writer:
        for i in range(round(seconds * fps)):
            writer.write(photo.frame(i)[0])
        return writer.close()


def ensure_samples(settings: EngineSettings) -> list[Avatar]:
    """Create the two sample avatars unless they exist (idempotent, fast when nothing changed)."""
    store = AvatarStore(settings)
    made = []
    for avatar_id in (PHOTO_ID, VIDEO_ID):
        try:
            made.append(store.get(avatar_id))
            continue
        except UnknownAvatar:
            pass
        with tempfile.TemporaryDirectory() as tmp:
            if avatar_id == PHOTO_ID:
                src = Path(tmp) / "astronaut.png"
                cv2.imwrite(str(src), astronaut_bgr())
            else:
                src = write_template_video(Path(tmp) / "astronaut.mp4", settings)
            made.append(store.add(src, avatar_id=avatar_id, name="Astronaut (sample)"))
    return made
