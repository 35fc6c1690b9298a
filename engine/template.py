"""A prepared avatar template: frames in output order together with their landmarks.

Video templates play forward, then backward (a ping-pong, so there is never a jump) for as long
as the speech needs; photos are animated on the fly. The ping-pong is a concat playlist of the
avatar's ``forward.mp4`` and ``reverse.mp4`` (frames n-2..1), so one ffmpeg process reads it and
the encoder can decode the very same sequence itself.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .animate import LivingPhoto
from .face.base import FaceTrack
from .frames import Region
from .prefetch import prefetch
from .video import VideoWriter, read_frames
from .wav import write_wav

SILENCE_RATE = 16000


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
    mouth_box: Region | None = None
    mouth_crops: np.ndarray | None = None  # (n_frames, h*3/2, w) I420 crops of ``mouth_box``, memory-mapped

    @property
    def n_frames(self) -> int:
        return len(self.track)

    def landmarks_at(self, i: int) -> np.ndarray:
        return self.track.landmarks[pingpong_index(i, self.n_frames)]

    def playlist(self, count: int, directory: Path) -> Path:
        """A concat-demuxer list that plays the video template ping-pong for ``count`` frames."""
        assert self.video_path is not None and self.reverse_path is not None
        n = self.n_frames
        cycle = [self.video_path] + ([self.reverse_path] if n > 2 else [])
        period = n + (n - 2 if n > 2 else 0)
        entries = cycle * math.ceil(count / period)
        fd, name = tempfile.mkstemp(prefix="template-", suffix=".txt", dir=directory)
        os.close(fd)
        path = Path(name)
        path.write_text("ffconcat version 1.0\n" + "".join(f"file '{p.resolve()}'\n" for p in entries))
        return path

    def frames(self, count: int, workdir: Path, region: Region | None = None,
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``count`` (I420 frame, landmarks) pairs in output order; frames may be read-only.

        With ``region`` the frames are that crop of the template and the landmarks are relative
        to its corner (video templates only).
        """
        if self.kind == "photo":
            assert self.image is not None and region is None
            photo = LivingPhoto(self.image, self.track.landmarks[0], self.fps)
            for i in range(count):
                yield photo.frame(i)
            return
        offset = np.zeros(2, np.float32) if region is None else np.array([region.x0, region.y0], np.float32)
        if region is not None and region == self.mouth_box and self.mouth_crops is not None:
            # Preprocessing kept the mouth region of every frame: no decoding at all.
            for i in range(count):
                yield self.mouth_crops[pingpong_index(i, self.n_frames)], self.landmarks_at(i) - offset
            return
        crop = None if region is None else (region.x0, region.y0, region.width, region.height)
        frames = prefetch(read_frames(self.playlist(count, workdir), self.width, self.height, concat=True,
                                      max_frames=count, pix_fmt="yuv420p", crop=crop), depth=6)
        produced = 0
        for i, frame in enumerate(frames):
            produced += 1
            yield frame, self.landmarks_at(i) - offset
        if produced < count:
            raise RuntimeError(f"the template played {produced} of {count} frames; re-add the avatar")

    def materialize(self, count: int, path: Path, crf: int = 16) -> Path:
        """Write the first ``count`` output-order frames as an MP4 with a silent audio track.

        External renderers (HeyGem) expect a model video with a sound track, as their own clients
        make it. The avatar store keeps no sound (a ping-pong of it would stutter), so the track is
        silence of the same length.
        """
        with tempfile.TemporaryDirectory() as tmp:
            silence = write_wav(Path(tmp) / "silence.wav", np.zeros(round(count / self.fps * SILENCE_RATE),
                                                                     np.float32), SILENCE_RATE)
            with VideoWriter(path, width=self.width, height=self.height, fps=self.fps, audio=silence, crf=crf,
                             pix_fmt="yuv420p") as writer:
                for frame, _ in self.frames(count, Path(tmp)):
                    writer.write(frame)
                return writer.close()
