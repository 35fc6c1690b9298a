"""list_voices: the voices the bridge can speak with, optionally only those for one language, so an agent
can honour "in a British voice" without guessing an id."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.choices import voices_for
from tools.video_jobs import client_for


class ListVoicesTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        language = str(tool_parameters.get("language") or "").strip()
        voices = voices_for(client_for(self).voices(), language)
        lines = [f"- {v['name']} (id {v['id']}; {', '.join(v['languages'])}; {v['backend']})" for v in voices]
        if lines:
            heading = f"Voices for {language!r}" if language else "Voices"
            yield self.create_text_message(f"{heading} (give the id or the name as voice):\n" + "\n".join(lines))
        else:
            yield self.create_text_message(f"No voice speaks {language[:64]!r}. Call list_voices without a language "
                                           "to see every voice.")
        yield self.create_json_message({"voices": voices})
