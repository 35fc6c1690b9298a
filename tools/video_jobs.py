"""What the video tools share: waiting for a job while reporting progress, and handing the result to Dify as
a file, a link, JSON and variables, all within Dify's limits on a tool call (tools/call_limits.py).

Waiting sleeps between polls (gevent yields, so the SDK's heartbeat keeps flowing) and ends at ``max_wait_s``
or sooner, to leave the call time for the file (tools/job_watch.py); a job still running then is not an error:
the caller gets its id for ``get_video``, and every output variable, empty until the video exists.
"""

from __future__ import annotations

import tempfile
from collections.abc import Generator
from typing import IO, Any

import requests
from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage
from dify_plugin.file.file import File

from tools.bridge_client import BridgeClient, BridgeConfig, BridgeError, FileTooLarge, OutOfTime, Upload
from tools.call_limits import (
    DIFY_CALL_LIMIT_S,
    FILE_MB_LABEL,
    MIB,
    CallDeadline,
    file_cap_bytes,
    link_only_reason,
    megabytes,
)
from tools.job_watch import FINAL, watch

DEFAULT_WAIT_S = 240
MAX_WAIT_S = 540
"""The tools' ``max_wait_s`` bound; the call's deadline (600 s less margins) may end a wait sooner."""
STAGES = {"queued": "waiting for a free renderer", "starting": "starting", "requeued": "waiting for a free renderer",
          "tts": "synthesising speech", "avatar": "preparing the avatar", "prepare": "preparing the avatar",
          "lipsync": "rendering", "encode": "encoding the video", "done": "done"}

Messages = Generator[ToolInvokeMessage, None, dict[str, Any]]
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
SPOOL_BYTES = 8 * 1024 * 1024


def client_for(tool: Tool) -> BridgeClient:
    """The client for this call; made as the call starts, its deadline is the call's."""
    return BridgeClient(BridgeConfig.from_credentials(tool.runtime.credentials), tool.runtime.user_id,
                        deadline=CallDeadline.start())


def dify_file(value: Any, field: str, kinds: str, deadline: CallDeadline) -> Upload:
    """A file parameter, streamed from Dify's signed URL (the SDK's ``File.blob`` gives up after 5 s), read in
    full before the call's ``deadline`` (checked between chunks) or refused."""
    if not isinstance(value, File):
        raise BridgeError(f"{field}: attach a file ({kinds})")
    url = value.url
    if not url or not url.startswith(("http://", "https://")):
        raise BridgeError(f"{field}: Dify gave no downloadable URL for the file; set FILES_URL (and "
                          "INTERNAL_FILES_URL) in Dify's environment")
    if deadline.left() <= 0:
        raise BridgeError(f"{field}: this tool call had no time left to read the file from Dify")
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (the caller closes it)
    size = 0
    try:
        left = deadline.left()
        with requests.get(url, stream=True, timeout=(min(10, left), min(120, left))) as response:
            if response.status_code != 200:
                raise BridgeError(f"{field}: Dify's file URL answered HTTP {response.status_code}")
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise BridgeError(f"{field}: the file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
                if deadline.left() <= 0:
                    raise BridgeError(f"{field}: the file had not arrived from Dify ({size / MIB:.1f} MB so far) "
                                      f"within the {DIFY_CALL_LIMIT_S:.0f} s Dify gives a tool call; give a "
                                      "smaller file or check INTERNAL_FILES_URL")
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
    """Poll the job until it ends or the wait is over (tools/job_watch.py), yielding a log line whenever its
    stage or progress moves; returns the last state seen."""
    root = tool.create_log_message("Talking head video", {"job_id": job["id"], "status": job["status"]},
                                   status=ToolInvokeMessage.LogMessage.LogStatus.START)
    yield root
    said = ""
    for seen in watch(job, client.job, client.deadline, max_wait_s):
        job = seen
        now = describe(job)
        if now != said and job["status"] not in FINAL:
            said = now
            yield tool.create_log_message(now, {"job_id": job["id"], "status": job["status"],
                                                "stage": job.get("stage"), "progress": job.get("progress")},
                                          parent=root)
    status = ToolInvokeMessage.LogMessage.LogStatus
    yield tool.finish_log_message(root, status.SUCCESS if job["status"] == "succeeded" else status.ERROR,
                                  data={"job_id": job["id"], "status": job["status"]},
                                  error=(job.get("error") or {}).get("message"))
    return job


def file_limit_bytes(credentials: dict[str, Any]) -> int:
    """The admin's cap for sending the MP4 itself ("Largest video sent as a file"), Dify's default if unset."""
    try:
        return file_cap_bytes(credentials)
    except ValueError as exc:
        raise BridgeError(f"{exc}. An admin sets it where the plugin is authorized") from None


def output_variables(job: dict[str, Any]) -> dict[str, Any]:
    """Every output variable the video tools declare, whatever the job's state: empty ("", or 0 for a number)
    while the video does not exist yet, so a workflow's IF node finds the same variables either way."""
    out = job["outputs"][0] if job["status"] == "succeeded" and job.get("outputs") else {}
    return {"job_id": job["id"], "video_url": out.get("video_url") or "", "duration_s": out.get("duration_s") or 0,
            "poster_url": out.get("poster_url") or "", "subtitles_url": out.get("subtitles_url") or ""}


def video_file(tool: Tool, client: BridgeClient, job_id: str, out: dict[str, Any],
               max_file_bytes: int) -> Generator[ToolInvokeMessage, None, None]:
    """The MP4 as a Dify file, when it fits the admin's cap and the call's time; else a sentence saying why only
    its link comes back."""
    deadline = client.deadline
    reason = link_only_reason(out["size_bytes"], max_file_bytes, deadline, job_id)
    if reason is None:
        try:
            data = client.download(out["video_url"], max_file_bytes, deadline.download_ends_at)
        except FileTooLarge as exc:
            reason = (f'The video is larger than "{FILE_MB_LABEL}" ({megabytes(max_file_bytes)}) allows ({exc}), '
                      "so only its link is returned.")
        except OutOfTime as exc:
            reason = (f"The video could not be handed over within the {DIFY_CALL_LIMIT_S:.0f} s Dify gives a tool "
                      f"call ({exc}), so only its link is returned. get_video with job id {job_id} returns the file "
                      "in a new call.")
        else:
            yield tool.create_blob_message(data, meta={"mime_type": "video/mp4",
                                                       "filename": f"talking-head-{job_id[:8]}.mp4"})
            return
    yield tool.create_text_message(reason)


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
    variables = {name: value for name, value in output_variables(job).items() if name != "job_id"}
    if job["status"] != "succeeded":
        for name, value in variables.items():
            yield tool.create_variable_message(name, value)
        yield tool.create_text_message(
            f"The video is still being made ({describe(job)}). Its job id is {job_id}: call get_video with it in "
            "a minute to get the video.")
        yield tool.create_json_message(job)
        return
    out = job["outputs"][0]
    if delivery != "link":
        yield from video_file(tool, client, job_id, out, max_file_bytes)
    notes = "".join(f" Note: {note.rstrip('.')}." for note in out.get("notes") or [])
    yield tool.create_text_message(
        f"Video ready: {out['duration_s']:.1f} s, {out['width']}x{out['height']}. The link works until "
        f"{out['expires_at']}.{notes}")
    yield tool.create_link_message(out["video_url"])
    yield tool.create_json_message(job)
    for name, value in variables.items():
        yield tool.create_variable_message(name, value)
