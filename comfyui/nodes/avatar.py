"""Talking Head Avatar: a saved avatar, an ``IMAGE`` (photo or frame batch) or a video from ComfyUI's input
folder → an avatar handle, preprocessed once (face track, template) and cached by content."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
import torch

from engine import EngineError

from .. import convert, host, media
from ..handle import AVATAR_TYPE, AvatarHandle

NODE = "Talking Head Avatar"
NONE = "(none)"
FACE_CODES = {"no_face", "face_too_small"}
_by_pixels: dict[str, AvatarHandle] = {}
"""Pixel digest → handle: an unchanged IMAGE is not even re-encoded on the next run."""


def saved_avatars() -> list[str]:
    try:
        return [NONE, *(a.id for a in host.engine().avatars.list())]
    except EngineError:
        return [NONE]


def input_videos() -> list[str]:
    """Videos in ComfyUI's input folder: the only files this node reads, so no typed path reaches the engine."""
    folder = folder_paths.get_input_directory()
    names = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return [NONE, *sorted(folder_paths.filter_files_content_types(names, ["video"]))]


def input_video(name: str) -> Path:
    """The file a ``video`` value names, only if it is a video inside ComfyUI's input folder.

    The combo's list is not enforced for an API prompt, so "../x.mp4" or "/etc/x.mp4" can arrive here; such a
    name is refused before anything is opened, whatever exists at that path.
    """
    folder = Path(folder_paths.get_input_directory()).resolve()
    path = (folder / name).resolve()
    fix = "pick a video from the list, or upload one into ComfyUI's input folder"
    if not path.is_relative_to(folder) or path == folder:
        raise host.NodeError(NODE, f"video {name!r} is outside ComfyUI's input folder", fix)
    if not path.is_file() or not folder_paths.filter_files_content_types([path.name], ["video"]):
        raise host.NodeError(NODE, f"no video {name!r} in ComfyUI's input folder", fix)
    return path


def preprocess(label: str, source: str) -> AvatarHandle:
    """The engine's avatar for an id or a file; a face it cannot use is recorded on the handle."""
    try:
        avatar = host.engine().avatars.resolve(source)
    except EngineError as err:
        if err.code in FACE_CODES:
            return AvatarHandle(label=label, problem=str(err))
        raise host.explain(NODE, err) from err
    return AvatarHandle(label=label, avatar_id=avatar.id)


def from_image(image: torch.Tensor, fps: float) -> AvatarHandle:
    digest = convert.content_hash(image)
    if digest in _by_pixels:
        return _by_pixels[digest]
    frames = convert.to_bgr(image)
    stem = host.work_dir() / f"avatar-{digest[:16]}"
    if len(frames) == 1:
        path = convert.write_png(frames[0], stem.with_suffix(".png"))
    else:
        path = media.frames_to_video(frames, fps, stem.with_suffix(".mp4"))
    handle = preprocess(f"image {digest[:8]}", str(path))
    _by_pixels[digest] = handle
    return handle


class TalkingHeadAvatar:
    """Exactly one source is used: the IMAGE if connected, else the video, else the saved avatar."""

    CATEGORY = host.CATEGORY
    DESCRIPTION = "The face for a talking head (lip sync): a saved avatar, a photo or frames, or an input video."
    RETURN_TYPES = (AVATAR_TYPE,)
    RETURN_NAMES = ("avatar",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "saved_avatar": (saved_avatars(), {"default": NONE,
                                                   "tooltip": "An avatar already in the engine's store."}),
                "video": (input_videos(), {"default": NONE,
                                           "tooltip": "A template video from ComfyUI's input folder."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 60.0, "step": 1.0,
                                  "tooltip": "Frame rate of a connected frame batch."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "A photo (batch of 1) or the frames of a template video."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, video: str) -> bool | str:
        """Only ``video`` is checked here (ComfyUI then skips its list check for it, so uploads made after the
        page loaded still validate); ``saved_avatar`` keeps ComfyUI's own check against the list."""
        if video != NONE:
            try:
                input_video(video)
            except host.NodeError as err:
                return str(err)
        return True

    def load(self, saved_avatar: str, video: str, fps: float, image: torch.Tensor | None = None
             ) -> tuple[AvatarHandle]:
        if image is not None:
            return (from_image(image, fps),)
        if video != NONE:
            return (preprocess(video, str(input_video(video))),)
        if saved_avatar != NONE:
            if saved_avatar not in saved_avatars():
                raise host.NodeError(NODE, f"no saved avatar {saved_avatar!r}", "pick one from the list")
            return (preprocess(saved_avatar, saved_avatar),)
        raise host.NodeError(NODE, "no face given", "pick a saved avatar, a video, or connect an IMAGE")
