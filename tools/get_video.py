"""get_video: a job id → where the video stands, and the video once it is ready."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from tools.bridge_client import BridgeError
from tools.video_jobs import client_for, deliver, file_limit_bytes


class GetVideoTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        job_id = str(tool_parameters.get("job_id") or "").strip()
        if not job_id:
            raise BridgeError("job_id is empty: give the id a video tool returned")
        client = client_for(self)
        job = client.job(job_id)
        limit = file_limit_bytes(self.runtime.credentials)
        yield from deliver(self, client, job, tool_parameters.get("delivery"), limit)
