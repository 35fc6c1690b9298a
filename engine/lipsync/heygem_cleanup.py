"""Removing what a HeyGem task leaves in the shared folder, now or once it is safe.

HeyGem leaves ``<code>_format.mp4``/``.wav``, a ``<code>/`` work folder (frames, ``audio_data.npy`` of
about 55 MB for 23 s of speech) and ``<code>-r.mp4`` behind for every task; nothing else removes them.
It has no cancel call either: a task we gave up on (our timeout, a stall) may still be reading its
inputs, so those are only removed once its result appears or a grace period has passed. Such tasks are
written down in ``.talking-head/pending/`` inside the folder, so any worker's next job finishes the job
even after a restart.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .heygem_files import result_name

log = logging.getLogger(__name__)

PENDING_DIR = ".talking-head/pending"


def leftovers(folder: Path, code: str) -> list[Path]:
    """Every path HeyGem may have made for task ``code``: its result, scratch video, format copies, work dir."""
    paths = [folder / result_name(code), folder / f"{code}-t.mp4", folder / code]
    paths += sorted(folder.glob(f"{code}_format.*"))
    return paths


def remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s from the HeyGem data dir: %s", path.name, exc)


@dataclass(frozen=True)
class Pending:
    """A task given up on: its inputs (names in the folder) and when to stop waiting (epoch seconds)."""

    code: str
    inputs: list[str]
    remove_at: float


def defer(folder: Path, code: str, inputs: list[str], grace_s: float, now: float | None = None) -> None:
    """Leave the inputs in place; ``sweep`` removes them and the task's leftovers later."""
    record = Pending(code, inputs, (time.time() if now is None else now) + grace_s)
    directory = folder / PENDING_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{code}.json").write_text(json.dumps(asdict(record)))
    except OSError as exc:
        log.warning("could not record HeyGem task %s for later clean-up: %s", code, exc)


def sweep(folder: Path, now: float | None = None) -> list[str]:
    """Clean up each recorded task whose result has appeared or whose grace period is over; their codes."""
    directory = folder / PENDING_DIR
    if not directory.is_dir():
        return []
    moment = time.time() if now is None else now
    done: list[str] = []
    for entry in sorted(directory.glob("*.json")):
        try:
            record = Pending(**json.loads(entry.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable HeyGem clean-up record %s (%s); removing it", entry.name, exc)
            entry.unlink(missing_ok=True)
            continue
        if not (folder / result_name(record.code)).exists() and moment < record.remove_at:
            continue
        inputs = [folder / Path(name).name for name in record.inputs]
        remove(inputs + leftovers(folder, record.code))
        entry.unlink(missing_ok=True)
        done.append(record.code)
    return done
