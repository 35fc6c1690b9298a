"""list_avatars: the avatars this caller may use, so an agent can pick one by name."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.video_jobs import client_for


class ListAvatarsTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        avatars = client_for(self).avatars()
        lines = [f"- {a['name']} (id {a['id']}, {a.get('kind') or 'avatar'}, {a['status']}"
                 f"{', shared' if a.get('shared') else ''})"
                 + (f" preview: {a['preview_url']}" if a.get("preview_url") else "") for a in avatars]
        yield self.create_text_message("Avatars:\n" + "\n".join(lines) if lines else "There are no avatars yet.")
        yield self.create_json_message({"avatars": avatars})
