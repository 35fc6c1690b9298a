"""The avatar store: templates preprocessed once (face track, normalised video) and reused.

Layout under ``<storage_root>/avatars/<id>/``: ``meta.json``, ``track-<backend>.npz``,
``poster.jpg`` and either ``photo.png`` or ``forward.mp4`` + ``reverse.mp4``. Every name is
generated here; an avatar id is checked against a strict pattern before it touches a path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import CorruptMedia, MediaTooLong, UnknownAvatar, UnsupportedMedia
from .face import FaceTrack, get_backend, track_frames
from .face.regions import track_mouth_region
from .frames import Region, crop, to_bgr
from .media import IMAGE_EXTS, validate_template
from .settings import EngineSettings
from .template import Template
from .video import VideoWriter, even_size, read_frames, write_jpeg

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
KEYFRAME_INTERVAL = 25  # the forward copy is cut into chunks this long to build the reverse copy
TEMPLATE_CRF = 14  # near-transparent: the template is re-encoded once more at render time


@dataclass
class Avatar:
    id: str
    name: str
    kind: str  # "video" | "photo"
    sha256: str
    fps: float
    width: int
    height: int
    n_frames: int
    face_backend: str
    created_at: float
    notes: list[str] = field(default_factory=list)
    mouth_region: list[int] | None = None  # x0, y0, x1, y1 of mouth.npy's crops (video avatars)

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps if self.kind == "video" else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "duration_s": round(self.duration_s, 3)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_id(avatar_id: str) -> str:
    if not ID_PATTERN.fullmatch(avatar_id):
        raise UnknownAvatar(
            f"{avatar_id!r} is not a valid avatar id: use 1-64 characters a-z, 0-9, '-' or '_'")
    return avatar_id


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:40] or "avatar"


class AvatarStore:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.root = settings.avatars_dir

    def _dir(self, avatar_id: str) -> Path:
        return self.root / check_id(avatar_id)

    def disk_bytes(self, avatar_id: str) -> int:
        """What the avatar occupies in the store (template, face track, crops): for storage quotas."""
        return sum(path.stat().st_size for path in self._dir(avatar_id).rglob("*") if path.is_file())

    def list(self) -> list[Avatar]:
        if not self.root.is_dir():
            return []
        found = []
        for meta in sorted(self.root.glob("*/meta.json")):
            try:
                found.append(Avatar(**json.loads(meta.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return found

    def get(self, avatar_id: str) -> Avatar:
        meta = self._dir(avatar_id) / "meta.json"
        if not meta.is_file():
            known = ", ".join(a.id for a in self.list()) or "none yet"
            raise UnknownAvatar(
                f"no avatar {avatar_id!r} (known: {known}); add one with `python -m engine avatars add`")
        return Avatar(**json.loads(meta.read_text()))

    def find_by_hash(self, sha: str) -> Avatar | None:
        return next((a for a in self.list() if a.sha256 == sha), None)

    def resolve(self, ref: str | Path, progress: Callable[[str, float], None] | None = None) -> Avatar:
        """An avatar id, or a template file (preprocessed on first use, cached by content hash)."""
        path = Path(ref)
        if isinstance(ref, str) and ID_PATTERN.fullmatch(ref) and (self.root / ref / "meta.json").is_file():
            return self.get(ref)
        if path.is_file():
            return self.add(path, progress=progress)
        return self.get(str(ref))

    def add(self, path: Path, avatar_id: str | None = None, name: str | None = None,
            progress: Callable[[str, float], None] | None = None) -> Avatar:
        """Validate and preprocess a template. The same content under the same id is a no-op."""
        info = validate_template(path, self.settings.max_template_s, self.settings.max_template_pixels,
                                 min_side=self.settings.min_face_px)
        sha = file_sha256(path)
        existing = self.find_by_hash(sha)
        if existing and (avatar_id is None or existing.id == avatar_id):
            return self._ensure_track(existing)
        avatar_id = check_id(avatar_id or f"{slug(path.stem)}-{sha[:8]}")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{avatar_id}.", dir=self.root))
        try:
            kind = "photo" if path.suffix.lower() in IMAGE_EXTS else "video"
            if kind == "photo":
                avatar = self._add_photo(path, work, avatar_id, name, sha)
            else:
                avatar = self._add_video(path, info.fps, info.width, info.height, work, avatar_id, name, sha,
                                         progress)
                expected = info.duration * avatar.fps
                if avatar.n_frames < 0.9 * expected - 2:
                    raise CorruptMedia(
                        f"{path.name} is truncated or damaged: only {avatar.n_frames} of about {expected:.0f} "
                        "frames could be decoded", field="avatar")
            (work / "meta.json").write_text(json.dumps(asdict(avatar), indent=2))
            work.chmod(0o755)  # mkdtemp makes it private; API and workers may run as different users
            target = self._dir(avatar_id)
            if target.exists():
                shutil.rmtree(target)
            work.replace(target)
            return avatar
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def delete(self, avatar_id: str) -> None:
        self.get(avatar_id)
        shutil.rmtree(self._dir(avatar_id))

    def _backend(self):
        return get_backend(self.settings)

    def _track_path(self, avatar_id: str) -> Path:
        return self._dir(avatar_id) / f"track-{self.settings.face_backend}.npz"

    def _ensure_track(self, avatar: Avatar) -> Avatar:
        """An avatar tracked with another landmark backend gets a track for the current one."""
        if self._track_path(avatar.id).is_file():
            return avatar
        template = self._frames_source(avatar)
        track = track_frames(template, self._backend(), fps=avatar.fps, min_face_px=self.settings.min_face_px)
        track.save(self._track_path(avatar.id))
        return avatar

    def _frames_source(self, avatar: Avatar) -> Iterator[np.ndarray]:
        d = self._dir(avatar.id)
        if avatar.kind == "photo":
            return iter([_read_image(d / "photo.png")])
        return read_frames(d / "forward.mp4", avatar.width, avatar.height)

    def _add_photo(self, path: Path, work: Path, avatar_id: str, name: str | None, sha: str) -> Avatar:
        image = _read_image(path)
        h, w = image.shape[:2]
        image = image[: h - h % 2, : w - w % 2]
        track = track_frames([image], self._backend(), fps=self.settings.default_fps,
                             min_face_px=self.settings.min_face_px)
        cv2.imwrite(str(work / "photo.png"), image)
        track.save(work / f"track-{self.settings.face_backend}.npz")
        write_jpeg(image, work / "poster.jpg")
        return Avatar(avatar_id, name or path.stem, "photo", sha, self.settings.default_fps, image.shape[1],
                      image.shape[0], 1, self.settings.face_backend, time.time(), list(track.notes))

    def _add_video(self, path: Path, fps: float, width: int, height: int, work: Path, avatar_id: str,
                   name: str | None, sha: str, progress: Callable[[str, float], None] | None) -> Avatar:
        if not 1 <= fps <= 60:
            fps = self.settings.default_fps
        w, h = even_size(width, height, None)
        forward = work / "forward.mp4"
        writer = VideoWriter(forward, width=w, height=h, fps=fps, audio=None, crf=TEMPLATE_CRF,
                             keyframe_interval=KEYFRAME_INTERVAL, fast_decode=True, pix_fmt="yuv420p")
        poster: list[np.ndarray] = []
        limit_s = self.settings.max_template_s
        most = round(limit_s * fps) + 1  # one frame of slack for the fps filter's rounding

        def tee() -> Iterator[np.ndarray]:
            # Decoding stops just past the limit whatever the header claims; more frames than the limit
            # allows means the header understated the length, and the template is refused, not cut.
            frames = read_frames(path, w, h, fps=fps, pix_fmt="yuv420p", max_s=limit_s + 2 / fps)
            for i, frame in enumerate(frames):
                if i >= most:
                    raise MediaTooLong(f"{path.name} runs longer than {limit_s:.0f} s; templates may be at most "
                                       f"{limit_s:.0f} s (trim it, or raise ENGINE_MAX_TEMPLATE_S)", field="avatar")
                writer.write(frame)
                image = to_bgr(frame)
                if not poster:
                    poster.append(image)
                if progress and i % 25 == 0:
                    progress("avatar", 0.0)
                yield image

        try:
            track = track_frames(tee(), self._backend(), fps=fps, min_face_px=self.settings.min_face_px)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if len(track) == 0 or not poster:
            raise CorruptMedia(f"{path.name} has no readable video frames", field="avatar")
        region = track_mouth_region(track.landmarks, w, h)
        _write_reverse(forward, work / "reverse.mp4", work / "mouth.npy", region, w, h, fps, len(track))
        track.save(work / f"track-{self.settings.face_backend}.npz")
        write_jpeg(poster[0], work / "poster.jpg")
        return Avatar(avatar_id, name or path.stem, "video", sha, fps, w, h, len(track),
                      self.settings.face_backend, time.time(), list(track.notes),
                      [region.x0, region.y0, region.x1, region.y1])

    def template(self, avatar: Avatar) -> Template:
        d = self._dir(avatar.id)
        track = FaceTrack.load(self._track_path(avatar.id))
        if avatar.kind == "photo":
            return Template("photo", avatar.fps, avatar.width, avatar.height, track, image=_read_image(d / "photo.png"))
        box = Region(*avatar.mouth_region) if avatar.mouth_region else None
        crops = np.load(d / "mouth.npy", mmap_mode="r") if box and (d / "mouth.npy").is_file() else None
        return Template("video", avatar.fps, avatar.width, avatar.height, track, video_path=d / "forward.mp4",
                        reverse_path=d / "reverse.mp4", mouth_box=box, mouth_crops=crops)


def _read_image(path: Path) -> np.ndarray:
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise CorruptMedia(f"{path.name} is not a readable image", field="avatar")
    if image.shape[0] < 16 or image.shape[1] < 16:
        raise UnsupportedMedia(f"{path.name} is only {image.shape[1]}x{image.shape[0]} pixels", field="avatar")
    return image


def _write_reverse(forward: Path, out: Path, crops_path: Path, region: Region, width: int, height: int,
                   fps: float, n_frames: int) -> None:
    """Frames n-2 down to 1 of the forward copy (the turning points are not repeated), built chunk by
    chunk so memory stays bounded; forward then reverse, repeated, is the ping-pong. The same pass
    keeps every frame's mouth region as raw I420, so renders of this avatar decode nothing."""
    crops = np.lib.format.open_memmap(crops_path, mode="w+", dtype=np.uint8,
                                      shape=(n_frames, region.height * 3 // 2, region.width))
    wanted = range(n_frames - 2, 0, -1)
    chunk = KEYFRAME_INTERVAL
    seen = 0
    with VideoWriter(out, width=width, height=height, fps=fps, audio=None, crf=TEMPLATE_CRF,
                     keyframe_interval=KEYFRAME_INTERVAL, fast_decode=True, pix_fmt="yuv420p") as writer:
        for start in range((n_frames - 1) // chunk * chunk, -1, -chunk):
            seek = max(start - 0.5, 0) / fps
            frames = list(itertools.islice(read_frames(forward, width, height, start_s=seek, pix_fmt="yuv420p",
                                                       max_frames=min(chunk, n_frames - start)), chunk))
            for index, frame in zip(range(start + len(frames) - 1, start - 1, -1), reversed(frames), strict=True):
                crops[index] = crop(frame, width, height, region)
                seen += 1
                if index in wanted:
                    writer.write(frame)
        crops.flush()
        del crops
        if seen != n_frames or writer.frames_written != len(wanted):
            raise CorruptMedia(f"the template decoded to {seen} frames backwards, {n_frames} forwards")
        if writer.frames_written:
            writer.close()
        else:  # a one- or two-frame template has no middle to play backwards
            writer.abort()
