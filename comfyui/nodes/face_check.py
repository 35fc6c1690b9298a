"""Talking Head Face Check: is there one usable face? → BOOLEAN + the reason, for a skip branch.

It is an output node so that its verdict lands in the prompt's history (and on the canvas) even when the
render it gates is skipped: a batch logs why an item was left out instead of failing.
"""

from __future__ import annotations

import torch

from .. import host
from ..handle import AVATAR_TYPE, AvatarHandle
from .avatar import from_image

NODE = "Talking Head Face Check"


class TalkingHeadFaceCheck:
    CATEGORY = host.CATEGORY
    DESCRIPTION = ("Checks a talking head (lip sync) avatar or image for one usable face; connect has_face to "
                   "Talking Head Render's only_if to skip items without one.")
    RETURN_TYPES = ("BOOLEAN", "STRING")
    RETURN_NAMES = ("has_face", "reason")
    FUNCTION = "check"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"label": ("STRING", {"default": "", "tooltip": "The item's name in the verdict, e.g. "
                                              "its file name, so a batch log says which one was skipped."})},
            "optional": {"avatar": (AVATAR_TYPE,), "image": ("IMAGE",)},
        }

    def check(self, label: str, avatar: AvatarHandle | None = None, image: torch.Tensor | None = None) -> dict:
        if avatar is None and image is None:
            raise host.NodeError(NODE, "nothing to check", "connect an avatar or an IMAGE")
        handle = avatar if avatar is not None else from_image(image, 25.0)
        name = label.strip() or handle.label
        if handle.usable:
            reason = f"{name}: face found (avatar {handle.avatar_id})"
        else:
            reason = f"{name}: skipped, {handle.problem}"
        return {"ui": {"text": [reason], "has_face": [handle.usable]}, "result": (handle.usable, reason)}
