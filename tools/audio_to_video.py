"""audio_to_video: a recording (a Dify file or an https URL) → the avatar lip-syncing it."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.parameters import ParameterOption
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.bridge_client import BridgeError
from tools.choices import AVATAR_CHOICE, avatar_id, parameter_options, wanted
from tools.video_jobs import client_for, deliver, dify_file, file_limit_bytes, follow, wait_seconds


class AudioToVideoTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        audio, audio_url = tool_parameters.get("audio"), str(tool_parameters.get("audio_url") or "").strip()
        if audio and audio_url:
            raise BridgeError("give the recording either as the audio file or as audio_url, not both")
        if not audio and not audio_url:
            raise BridgeError("give the recording as audio_url (an https link to it) or, in a workflow, as the audio "
                              "file (an agent cannot pass files to tools)")
        client = client_for(self)
        limit = file_limit_bytes(self.runtime.credentials)
        avatar = avatar_id(client, wanted(tool_parameters.get("avatar"), tool_parameters.get(AVATAR_CHOICE)))
        fields = {"avatar_id": avatar, "resolution": tool_parameters.get("resolution") or "source"}
        if audio_url:
            job = client.submit({**fields, "audio_url": audio_url})
        else:
            upload = dify_file(audio, "audio", "a recording: wav, mp3, m4a, aac, flac or ogg", client.deadline)
            try:
                job = client.submit(fields, upload)
            finally:
                upload.stream.close()
        job = yield from follow(self, client, job, wait_seconds(tool_parameters.get("max_wait_s")))
        yield from deliver(self, client, job, tool_parameters.get("delivery"), limit)

    def _fetch_parameter_options(self, parameter: str) -> list[ParameterOption]:
        return parameter_options(client_for(self), parameter)
