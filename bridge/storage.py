"""Job files under the storage root: ``jobs/<id>/outputs/<name>``, names from a fixed allow-list.

No user-supplied string ever becomes part of a path: job ids are server-made hex and file names
come from ``OUTPUT_NAMES``. Files appear atomically (temp file, then ``os.replace``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

OUTPUT_NAMES: dict[str, str] = {
    "video.mp4": "video/mp4",
    "poster.jpg": "image/jpeg",
    "subtitles.vtt": "text/vtt",
    "subtitles.srt": "application/x-subrip",
}
"""Every file a job may publish, with the media type it is served as."""
JOB_ID = re.compile(r"[0-9a-f]{32}")


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()  # absolute: Flask resolves relative paths against the package

    @staticmethod
    def check_job_id(job_id: str) -> str:
        if not JOB_ID.fullmatch(job_id):
            raise ValueError("not a job id")
        return job_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / self.check_job_id(job_id)

    def outputs_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "outputs"

    def work_dir(self, job_id: str, attempt: int) -> Path:
        """Scratch space for one attempt, so a redelivered task never trips over a dead attempt's files."""
        return self.job_dir(job_id) / "work" / f"attempt-{int(attempt)}"

    def drop_stale_work(self, job_id: str, attempt: int) -> None:
        """Remove the scratch of earlier attempts: their workers died or lost the job to this attempt."""
        for earlier in range(1, int(attempt)):
            shutil.rmtree(self.work_dir(job_id, earlier), ignore_errors=True)

    def output_path(self, job_id: str, name: str) -> Path:
        if name not in OUTPUT_NAMES:
            raise ValueError(f"{name!r} is not an output name")
        return self.outputs_dir(job_id) / name

    def publish(self, job_id: str, name: str, source: Path) -> Path:
        """Move a finished file into place atomically (copy to a temp sibling first if on another filesystem)."""
        target = self.output_path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
        os.close(fd)
        try:
            try:
                os.replace(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target

    def write_bytes(self, job_id: str, name: str, data: bytes) -> Path:
        target = self.output_path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target
