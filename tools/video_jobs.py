"""What the video tools share: waiting for a job with a deadline while reporting progress, and handing the
result to Dify as a file, a link, JSON and variables.

Waiting sleeps between polls (gevent yields, so the SDK's heartbeat keeps flowing) and never outlives
``max_wait_s``; a job still running then is not an error: the caller gets its id for ``get_video``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Generator
from typing import IO, Any

import requests
from dify_plugin import Tool
from dify_plugin.entities.parameters import I18nObject, ParameterOption
from dify_plugin.entities.tool import ToolInvokeMessage
from dify_plugin.file.file import File

from tools.bridge_client import BridgeClient, BridgeConfig, BridgeError, Upload

FINAL = {"succeeded", "failed", "canceled"}
POLL_S = 0.5
DEFAULT_WAIT_S = 240
MAX_WAIT_S = 540
"""Dify's plugin daemon stops a tool call at 600 s (PLUGIN_MAX_EXECUTION_TIMEOUT)."""
DIFY_FILE_LIMIT_MB = 30.0
"""Dify refuses a tool file above 30 MB."""
STAGES = {"queued": "waiting for a free renderer", "starting": "starting", "requeued": "waiting for a free renderer",
          "tts": "synthesising speech", "avatar": "preparing the avatar", "prepare": "preparing the avatar",
          "lipsync": "rendering", "encode": "encoding the video", "done": "done"}

Messages = Generator[ToolInvokeMessage, None, dict[str, Any]]
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
SPOOL_BYTES = 8 * 1024 * 1024


def client_for(tool: Tool) -> BridgeClient:
    return BridgeClient(BridgeConfig.from_credentials(tool.runtime.credentials), tool.runtime.user_id)


def parameter_options(client: BridgeClient, parameter: str) -> list[ParameterOption]:
    """Choices for the dynamic selects: the bridge's ready avatars, or its voices."""
    if parameter == "avatar":
        return [ParameterOption(value=a["id"], label=I18nObject(en_US=f"{a['name']} ({a.get('kind') or 'avatar'})"))
                for a in client.avatars() if a.get("status") == "ready"]
    if parameter == "voice":
        return [ParameterOption(value=v["id"], label=I18nObject(
            en_US=f"{v['name']} · {', '.join(v['languages'][:2])} · {v['backend']}")) for v in client.voices()]
    return []


def dify_file(value: Any, field: str, kinds: str) -> Upload:
    """A file parameter, streamed from Dify's signed URL (the SDK's ``File.blob`` gives up after 5 s)."""
    if not isinstance(value, File):
        raise BridgeError(f"{field}: attach a file ({kinds})")
    url = value.url
    if not url or not url.startswith(("http://", "https://")):
        raise BridgeError(f"{field}: Dify gave no downloadable URL for the file; set FILES_URL (and "
                          "INTERNAL_FILES_URL) in Dify's environment")
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (the caller closes it)
    size = 0
    try:
        with requests.get(url, stream=True, timeout=(10, 120)) as response:
            if response.status_code != 200:
                raise BridgeError(f"{field}: Dify's file URL answered HTTP {response.status_code}")
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise BridgeError(f"{field}: the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
                spool.write(chunk)
    except requests.RequestException as exc:
        spool.close()
        raise BridgeError(f"{field}: could not read the file from Dify ({type(exc).__name__}); check "
                          "INTERNAL_FILES_URL") from None
    except BridgeError:
        spool.close()
        raise
    spool.seek(0)
    name = value.filename or f"upload{value.extension or ''}"
    return Upload(field, name, spool, value.mime_type or "application/octet-stream")


def wait_seconds(value: Any) -> float:
    try:
        wanted = float(value) if value not in (None, "") else DEFAULT_WAIT_S
    except (TypeError, ValueError):
        wanted = DEFAULT_WAIT_S
    return max(5.0, min(wanted, MAX_WAIT_S))


def describe(job: dict[str, Any]) -> str:
    if job["status"] == "queued":
        return STAGES["queued"]
    stage = STAGES.get(str(job.get("stage") or ""), str(job.get("stage") or "working"))
    return f"{stage} {round(100 * float(job.get('progress') or 0))}%"


def follow(tool: Tool, client: BridgeClient, job: dict[str, Any], max_wait_s: float) -> Messages:
    """Poll the job until it ends or the deadline passes, yielding a log line whenever its stage or progress
    moves; returns the last state seen."""
    deadline = time.monotonic() + max_wait_s
    root = tool.create_log_message("Talking head video", {"job_id": job["id"], "status": job["status"]},
                                   status=ToolInvokeMessage.LogMessage.LogStatus.START)
    yield root
    said = ""
    while True:
        now = describe(job)
        if now != said and job["status"] not in FINAL:
            said = now
            yield tool.create_log_message(now, {"job_id": job["id"], "status": job["status"],
                                                "stage": job.get("stage"), "progress": job.get("progress")},
                                          parent=root)
        if job["status"] in FINAL or time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        job = client.job(job["id"])
    status = ToolInvokeMessage.LogMessage.LogStatus
    yield tool.finish_log_message(root, status.SUCCESS if job["status"] == "succeeded" else status.ERROR,
                                  data={"job_id": job["id"], "status": job["status"]},
                                  error=(job.get("error") or {}).get("message"))
    return job


def file_limit_bytes(credentials: dict[str, Any]) -> int:
    """The admin's cap for sending the MP4 itself (``max_file_mb``), never above Dify's own 30 MB."""
    try:
        limit = float(credentials.get("max_file_mb") or DIFY_FILE_LIMIT_MB)
    except (TypeError, ValueError):
        limit = DIFY_FILE_LIMIT_MB
    return int(min(max(limit, 0.0), DIFY_FILE_LIMIT_MB) * 1024 * 1024)


def deliver(tool: Tool, client: BridgeClient, job: dict[str, Any], delivery: str | None,
            max_file_bytes: int) -> Generator[ToolInvokeMessage, None, None]:
    """Whatever the job came to, in the messages Dify shows: file + link + JSON + variables, or why not."""
    job_id = job["id"]
    yield tool.create_variable_message("job_id", job_id)
    if job["status"] == "failed":
        error = job.get("error") or {}
        raise BridgeError(f"The video could not be made: {error.get('message') or 'unknown error'} "
                           f"(job {job_id}, {error.get('code', 'failed')})")
    if job["status"] == "canceled":
        raise BridgeError(f"Job {job_id} was canceled before it finished")
    if job["status"] != "succeeded":
        yield tool.create_text_message(
            f"The video is still being made ({describe(job)}). Its job id is {job_id}: call get_video with it in "
            "a minute to get the video.")
        yield tool.create_json_message(job)
        return
    out = job["outputs"][0]
    if delivery != "link" and out["size_bytes"] <= max_file_bytes:
        data = client.download(out["video_url"], max_file_bytes)
        if data is not None:
            yield tool.create_blob_message(data, meta={"mime_type": "video/mp4",
                                                       "filename": f"talking-head-{job_id[:8]}.mp4"})
    elif delivery != "link":
        yield tool.create_text_message(
            f"The video is {out['size_bytes'] / 2**20:.1f} MB, more than the {max_file_bytes / 2**20:.0f} MB a Dify "
            "file may have here, so only its link is returned.")
    yield tool.create_text_message(
        f"Video ready: {out['duration_s']:.1f} s, {out['width']}x{out['height']}. The link works until "
        f"{out['expires_at']}.")
    yield tool.create_link_message(out["video_url"])
    yield tool.create_json_message(job)
    yield tool.create_variable_message("video_url", out["video_url"])
    yield tool.create_variable_message("duration_s", out["duration_s"])
    yield tool.create_variable_message("poster_url", out.get("poster_url") or "")
    yield tool.create_variable_message("subtitles_url", out.get("subtitles_url") or "")
