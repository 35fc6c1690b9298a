"""Talking Head (lip sync) nodes for ComfyUI: text → speech → lip-synced video with this repository's engine.

Link or copy this folder into ComfyUI's ``custom_nodes/`` and install the engine into ComfyUI's Python
(README: "ComfyUI nodes"). Every node lives in the "Talking Head (lip sync)" category.
"""

from .nodes.avatar import TalkingHeadAvatar
from .nodes.face_check import TalkingHeadFaceCheck
from .nodes.remote import TalkingHeadRemote
from .nodes.render import TalkingHeadRender
from .nodes.speech import TalkingHeadSpeech

NODE_CLASS_MAPPINGS = {
    "TalkingHeadSpeech": TalkingHeadSpeech,
    "TalkingHeadAvatar": TalkingHeadAvatar,
    "TalkingHeadFaceCheck": TalkingHeadFaceCheck,
    "TalkingHeadRender": TalkingHeadRender,
    "TalkingHeadRemote": TalkingHeadRemote,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TalkingHeadSpeech": "Talking Head Speech (lip sync)",
    "TalkingHeadAvatar": "Talking Head Avatar (lip sync)",
    "TalkingHeadFaceCheck": "Talking Head Face Check (lip sync)",
    "TalkingHeadRender": "Talking Head Render (lip sync)",
    "TalkingHeadRemote": "Talking Head (remote, lip sync)",
}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
