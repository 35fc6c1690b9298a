"""Talking Head Render: ``AUDIO`` + avatar → ``VIDEO`` (H.264 + AAC MP4, for core Save Video) + ``IMAGE``."""

from __future__ import annotations

import torch
from comfy_api.input_impl import VideoFromFile
from comfy_execution.graph_utils import ExecutionBlocker

from engine import EngineError
from engine.render import RenderRequest

from .. import convert, host, media
from ..handle import AVATAR_TYPE, SPOKEN_KEY, AvatarHandle

NODE = "Talking Head Render"
FRAMES = ["poster", "all"]


def _request(audio: dict, avatar_id: str, resolution: str, subtitles: bool) -> RenderRequest:
    """Speech made by Talking Head Speech keeps its word timings (subtitles need them); any other AUDIO,
    from Load Audio say, goes to the engine as a WAV file."""
    out = host.fresh_path(".mp4")
    spoken = audio.get(SPOKEN_KEY)
    if spoken is not None:
        return RenderRequest(avatar=avatar_id, out=out, spoken=spoken, resolution=resolution,
                             burn_subtitles=subtitles)
    wav = convert.write_wav(audio, host.fresh_path(".wav"))
    return RenderRequest(avatar=avatar_id, out=out, audio=wav, resolution=resolution, burn_subtitles=subtitles)


class TalkingHeadRender:
    """Lip-syncs on the CPU with the resident engine; the progress bar follows the frames, Stop interrupts."""

    CATEGORY = host.CATEGORY
    DESCRIPTION = "Renders a talking head (lip sync) video from speech and an avatar."
    RETURN_TYPES = ("VIDEO", "IMAGE")
    RETURN_NAMES = ("video", "frames")
    FUNCTION = "render"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "audio": ("AUDIO",),
                "avatar": (AVATAR_TYPE,),
                "resolution": (["source", "720p", "1080p"], {"default": "source"}),
                "subtitles": ("BOOLEAN", {"default": False, "tooltip": "Burn the words into the picture "
                                          "(needs speech from Talking Head Speech)."}),
                "logo_corner": (media.CORNERS, {"default": "bottom-right"}),
                "logo_scale": ("FLOAT", {"default": 0.15, "min": 0.02, "max": 0.5, "step": 0.01,
                                         "tooltip": "Logo width as a share of the video width."}),
                "frames": (FRAMES, {"default": "poster", "tooltip": "IMAGE output: the poster frame, or every "
                                    "frame (a 5 s 720p video is about 1.4 GB as float frames)."}),
            },
            "optional": {
                "logo": ("IMAGE",),
                "only_if": ("BOOLEAN", {"forceInput": True, "tooltip": "From Face Check's has_face: false "
                                        "skips this render and everything after it."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def render(self, audio: dict, avatar: AvatarHandle, resolution: str, subtitles: bool, logo_corner: str,
               logo_scale: float, frames: str, logo: torch.Tensor | None = None, only_if: bool | None = None,
               unique_id: str | None = None) -> tuple:
        if only_if is False:
            return (ExecutionBlocker(None), ExecutionBlocker(None))
        if not avatar.usable:
            raise host.NodeError(NODE, f"{avatar.label} has no usable face ({avatar.problem})",
                                 "choose another photo, or gate this node with Talking Head Face Check")
        request = _request(audio, avatar.avatar_id or "", resolution, subtitles)
        try:
            result = host.engine().render(request, progress=host.progress(unique_id))
        except EngineError as err:
            raise host.explain(NODE, err) from err
        video, poster = result.video, result.poster
        if logo is not None:
            logo_png = convert.write_png(convert.to_bgr(logo)[0], host.fresh_path(".png"))
            frame_width = media.read_image(poster).shape[1]
            size = media.logo_size((int(logo.shape[1]), int(logo.shape[2])), frame_width, logo_scale)
            video = media.overlay_logo(video, logo_png, logo_corner, size, host.fresh_path(".mp4"))
            poster = media.overlay_logo_image(poster, logo_png, logo_corner, size, host.fresh_path(".png"))
        pictures = media.read_frames(video) if frames == "all" else [media.read_image(poster)]
        return (VideoFromFile(str(video)), convert.from_rgb(pictures))
