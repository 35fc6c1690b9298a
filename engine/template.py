"""A prepared avatar template: frames in output order together with their landmarks.

Video templates play forward, then backward (a ping-pong, so there is never a jump) for as long
as the speech needs; photos are animated on the fly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .animate import LivingPhoto
from .face.base import FaceTrack
from .pipeline import prefetch
from .video import VideoWriter, read_frames


def pingpong_index(i: int, n: int) -> int:
    """Template frame shown at output frame ``i``: 0..n-1, then n-2..1, then again."""
    if n <= 1:
        return 0
    k = i % (2 * n - 2)
    return k if k < n else 2 * n - 2 - k


@dataclass
class Template:
    kind: str  # "video" or "photo"
    fps: float
    width: int
    height: int
    track: FaceTrack
    video_path: Path | None = None
    reverse_path: Path | None = None
    image: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return len(self.track)

    def landmarks_at(self, i: int) -> np.ndarray:
        return self.track.landmarks[pingpong_index(i, self.n_frames)]

    def frames(self, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``count`` (I420 frame, landmarks) pairs in output order; frames may be read-only."""
        if self.kind == "photo":
            assert self.image is not None
            photo = LivingPhoto(self.image, self.track.landmarks[0], self.fps)
            for i in range(count):
                yield photo.frame(i)
            return
        frames = prefetch(self._video_frames(count), depth=6)
        yield from zip(frames, (self.landmarks_at(i) for i in range(count)), strict=False)

    def _video_frames(self, count: int) -> Iterator[np.ndarray]:
        assert self.video_path is not None and self.reverse_path is not None
        n, produced, forward = self.n_frames, 0, True
        while produced < count:
            if forward:
                chunk = read_frames(self.video_path, self.width, self.height, max_frames=min(n, count - produced),
                                    pix_fmt="yuv420p")
            else:
                # The reverse file's first and last frames repeat the turning points; skip them.
                chunk = itertools.islice(
                    read_frames(self.reverse_path, self.width, self.height, max_frames=n - 1, pix_fmt="yuv420p"),
                    1, None)
            got = 0
            for frame in chunk:
                yield frame
                got += 1
                produced += 1
                if produced >= count:
                    return
            if got == 0:
                raise RuntimeError(f"template {self.video_path.name} yielded no frames")
            forward = not forward if n > 1 else True

    def materialize(self, count: int, path: Path, crf: int = 16) -> Path:
        """Write the first ``count`` output-order frames as a silent MP4 (for external renderers)."""
        with VideoWriter(path, width=self.width, height=self.height, fps=self.fps, audio=None, crf=crf,
                         pix_fmt="yuv420p") as writer:
            for frame, _ in self.frames(count):
                writer.write(frame)
            return writer.close()
