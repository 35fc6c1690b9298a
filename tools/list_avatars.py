"""list_avatars: the avatars everyone in the workspace can use, so an agent can pick one by name.

Avatars belong to the bridge API key, the workspace's, not to the Dify user who asks: what this lists is
what every end user of a published app can use as well.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.video_jobs import client_for


def line(avatar: dict[str, Any]) -> str:
    status = avatar["status"] if avatar["status"] == "ready" else f"{avatar['status']}, not usable yet"
    origin = "; added on the bridge host" if avatar.get("shared") else ""
    preview = f" preview: {avatar['preview_url']}" if avatar.get("preview_url") else ""
    return f"- {avatar['name']} (id {avatar['id']}; {avatar.get('kind') or 'avatar'}; {status}{origin}){preview}"


class ListAvatarsTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        avatars = client_for(self).avatars()
        if avatars:
            yield self.create_text_message("Avatars this workspace can use (give the id or the name as avatar):\n"
                                           + "\n".join(line(a) for a in avatars))
        else:
            yield self.create_text_message("This workspace has no avatars yet.")
        yield self.create_json_message({"avatars": avatars})
