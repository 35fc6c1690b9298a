"""create_avatar: a video or photo of one face → a new avatar, preprocessed and ready to speak."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.bridge_client import BridgeError
from tools.video_jobs import client_for, dify_file, follow, wait_seconds


class CreateAvatarTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        name = str(tool_parameters.get("name") or "").strip()
        if not name:
            raise BridgeError("name is empty: say what the avatar should be called, e.g. 'Anna, studio'")
        upload = dify_file(tool_parameters.get("file"), "file",
                           "a video (mp4, mov, mkv, webm) or a photo (png, jpg, webp) of one face")
        client = client_for(self)
        try:
            created = client.create_avatar(name[:100], upload)
        finally:
            upload.stream.close()
        avatar_id = created["avatar"]["id"]
        yield self.create_variable_message("avatar_id", avatar_id)
        job = yield from follow(self, client, created["job"], wait_seconds(tool_parameters.get("max_wait_s")))
        if job["status"] == "failed":
            raise BridgeError(f"The avatar could not be made: {(job.get('error') or {}).get('message')}")
        if job["status"] != "succeeded":
            yield self.create_text_message(
                f"Avatar {name!r} ({avatar_id}) is still being prepared; it will appear in list_avatars as ready "
                f"when job {job['id']} finishes.")
        else:
            yield self.create_text_message(f"Avatar {name!r} is ready. Use avatar id {avatar_id} to make videos.")
        yield self.create_json_message({"avatar_id": avatar_id, "name": name, "job": job})
