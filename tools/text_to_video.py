"""text_to_video: a line of text → a talking-head MP4 (the main tool)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.parameters import ParameterOption
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.bridge_client import BridgeError
from tools.choices import AVATAR_CHOICE, VOICE_CHOICE, avatar_id, parameter_options, voice_id, wanted
from tools.video_jobs import client_for, deliver, file_limit_bytes, follow, wait_seconds


class TextToVideoTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        text = str(tool_parameters.get("text") or "").strip()
        if not text:
            raise BridgeError("text is empty: give the words the avatar should say")
        client = client_for(self)
        limit = file_limit_bytes(self.runtime.credentials)
        avatar = avatar_id(client, wanted(tool_parameters.get("avatar"), tool_parameters.get(AVATAR_CHOICE)))
        voice = voice_id(client, wanted(tool_parameters.get("voice"), tool_parameters.get(VOICE_CHOICE)))
        job = client.submit({
            "text": text, "avatar_id": avatar, "voice": voice,
            "lang": str(tool_parameters.get("language") or "auto").strip().lower(),
            "speed": float(tool_parameters.get("speed") or 1.0),
            "resolution": tool_parameters.get("resolution") or "source",
            "subtitles": bool(tool_parameters.get("subtitles")),
        })
        job = yield from follow(self, client, job, wait_seconds(tool_parameters.get("max_wait_s")))
        yield from deliver(self, client, job, tool_parameters.get("delivery"), limit)

    def _fetch_parameter_options(self, parameter: str) -> list[ParameterOption]:
        return parameter_options(client_for(self), parameter)
