"""The public JSON of a job: what GET /v1/jobs/{id} returns and what a callback POSTs.

Links are minted on every call, so they are always fresh; a job whose files retention deleted lists
no outputs and says when they went.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.db import Job
from bridge.links import LinkMinter


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_json(job: Job, links: LinkMinter) -> dict[str, Any]:
    outputs = []
    for out in [] if job.purged_at is not None else job.outputs or []:
        video = links.sign(job.id, out["name"])
        outputs.append({
            "avatar_id": out["avatar_id"],
            "video_url": video.url,
            "poster_url": links.sign(job.id, out["poster"]).url if out.get("poster") else None,
            "subtitles_url": links.sign(job.id, out["subtitles_vtt"]).url if out.get("subtitles_vtt") else None,
            "expires_at": iso(datetime.fromtimestamp(video.expires_at, UTC)),
            **{key: out[key] for key in ("duration_s", "width", "height", "size_bytes", "mime")},
            # Outputs stored before notes were kept have none.
            "notes": list(out.get("notes") or []),
        })
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return {"id": job.id, "kind": job.kind or "render", "status": job.status, "stage": job.stage,
            "progress": job.progress, "attempts": job.attempts, "error": error, "created_at": iso(job.created_at),
            "updated_at": iso(job.updated_at), "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at), "outputs": outputs, "avatar": job.result,
            "files_deleted_at": iso(job.purged_at)}
