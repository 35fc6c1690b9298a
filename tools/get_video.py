"""get_video: a job id → where the video stands, and the video once it is ready.

It is also the way back to the file when a video tool could only return the link (too little of the call's
time was left): a new call has the whole of Dify's time limit for the download and the hand-over.
"""

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
        limit = file_limit_bytes(self.runtime.credentials)
        yield from deliver(self, client, client.job(job_id), tool_parameters.get("delivery"), limit)
