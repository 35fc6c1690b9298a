"""Job files under the storage root: ``jobs/<id>/inputs/<name>`` and ``jobs/<id>/outputs/<name>``.

No user-supplied string ever becomes part of a path: job ids are server-made hex, and file names
match ``OUTPUT_NAME`` or ``INPUT_NAME``, both built by the server. Files appear atomically (temp
file, then ``os.replace``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

MIME_TYPES: dict[str, str] = {
    "mp4": "video/mp4", "jpg": "image/jpeg", "vtt": "text/vtt", "srt": "application/x-subrip",
}
OUTPUT_NAME = re.compile(r"(?:video(?:-[1-9][0-9]?)?\.mp4|poster(?:-[1-9][0-9]?)?\.jpg"
                         r"|subtitles(?:-[1-9][0-9]?)?\.(?:vtt|srt))")
"""Every file a job may publish: ``video.mp4``, ``poster.jpg``, ``subtitles.vtt|srt`` for its first
avatar, with ``-<n>`` before the extension for the n-th further avatar of a batch."""
OUTPUT_NAMES: dict[str, str] = {"video.mp4": "video/mp4", "poster.jpg": "image/jpeg",
                                "subtitles.vtt": "text/vtt", "subtitles.srt": "application/x-subrip"}
"""The names of a single-avatar job."""
INPUT_NAME = re.compile(r"audio\.(?:wav|mp3|m4a|aac|flac|ogg)|avatar\.(?:mp4|mov|mkv|webm|avi|flv|png|jpg|webp)")
JOB_ID = re.compile(r"[0-9a-f]{32}")


def output_name(stem: str, ext: str, index: int) -> str:
    """The published name of one file of the ``index``-th avatar (0 for the first)."""
    name = f"{stem}.{ext}" if index == 0 else f"{stem}-{index}.{ext}"
    if not OUTPUT_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an output name")
    return name


def output_mime(name: str) -> str | None:
    """The media type ``name`` is served as, or None when it is not an output name."""
    return MIME_TYPES[name.rsplit(".", 1)[1]] if OUTPUT_NAME.fullmatch(name) else None


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

    def job_folders(self) -> list[Path]:
        """Every job folder (named by a job id) under ``jobs/``."""
        root = self.root / "jobs"
        return [path for path in root.iterdir() if JOB_ID.fullmatch(path.name)] if root.is_dir() else []

    def drop_job(self, job_id: str) -> None:
        """Delete every file of a job (retention, or an upload that turned out to be a replay)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def drop_outputs(self, job_id: str) -> None:
        """Delete what a failed attempt published, so no partial set of files is left."""
        shutil.rmtree(self.outputs_dir(job_id), ignore_errors=True)

    def drop_stale_work(self, job_id: str, attempt: int) -> None:
        """Remove the scratch of earlier attempts: their workers died or lost the job to this attempt."""
        for earlier in range(1, int(attempt)):
            shutil.rmtree(self.work_dir(job_id, earlier), ignore_errors=True)

    def outputs_bytes(self, job_id: str) -> int:
        """What a job's published files occupy (for the per-key storage quota)."""
        folder = self.outputs_dir(job_id)
        return sum(path.stat().st_size for path in folder.iterdir() if path.is_file()) if folder.is_dir() else 0

    def output_path(self, job_id: str, name: str) -> Path:
        if not OUTPUT_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an output name")
        return self.outputs_dir(job_id) / name

    def input_path(self, job_id: str, name: str) -> Path:
        if not INPUT_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an input name")
        return self.job_dir(job_id) / "inputs" / name

    def put_input(self, job_id: str, name: str, source: Path) -> Path:
        """Move a validated upload or download into the job's inputs (atomically, server-made name)."""
        target = self.input_path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        _move_atomic(source, target)
        return target

    def scratch(self) -> Path:
        """Where the API keeps uploads and downloads until they pass validation (same filesystem as jobs/)."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, job_id: str, name: str, source: Path) -> Path:
        """Move a finished file into place atomically (copy to a temp sibling first if on another filesystem)."""
        target = self.output_path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        _move_atomic(source, target)
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


def _move_atomic(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
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
