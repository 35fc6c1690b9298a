"""create_avatar: a video or photo of one face (a Dify file, or an https URL the bridge fetches) → a new
avatar of the workspace, preprocessed and ready to speak.

Agents never see the file parameter (Dify leaves file parameters out of the schema it gives the model), so
the URL is how an agent makes an avatar; a workflow may give either.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.bridge_client import BridgeError
from tools.video_jobs import client_for, dify_file, follow, wait_seconds

KINDS = "a video (mp4, mov, mkv, webm) or a photo (png, jpg, webp) of one face"


class CreateAvatarTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        name = str(tool_parameters.get("name") or "").strip()
        if not name:
            raise BridgeError("name is empty: say what the avatar should be called, e.g. 'Anna, studio'")
        file, url = tool_parameters.get("file"), str(tool_parameters.get("url") or "").strip()
        if file and url:
            raise BridgeError("give the face either as the file or as url, not both")
        if not file and not url:
            raise BridgeError(f"give {KINDS}: as url, an https link to it, or, in a workflow, as the file (an agent "
                              "cannot pass files to tools, so ask the user for a link)")
        client = client_for(self)
        if url:
            if not url.lower().startswith(("https://", "http://")):
                raise BridgeError(f"url must be a whole https:// link to {KINDS}; {url[:80]!r} is not")
            created = client.create_avatar(name[:100], url=url)
        else:
            upload = dify_file(file, "file", KINDS, client.deadline)
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
