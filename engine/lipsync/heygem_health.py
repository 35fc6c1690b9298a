"""HeyGem's state as an admin needs to see it in ``/readyz``: reachable, stalled, shared folder usable.

A stalled HeyGem task (progress stuck, every later submit answered "busy") only ends when the container
restarts, and nothing in HeyGem's API says so; the worker that notices writes a marker into the shared
folder, and the next task that finishes removes it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..errors import EngineError
from ..settings import EngineSettings
from .heygem_client import HeyGemClient
from .heygem_files import SharedFolder

log = logging.getLogger(__name__)

STALL_MARKER = ".talking-head/stalled.json"
RESTART_HINT = "restart the HeyGem container (docker restart heygem-gen-video); a stalled task never ends by itself"
PROBE_TIMEOUT_S = 3.0


def record_stall(folder: Path, code: str, progress: float) -> None:
    marker = folder / STALL_MARKER
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"code": code, "progress": progress, "since": time.time()}))
    except OSError as exc:
        log.warning("could not record HeyGem's stall in %s: %s", marker, exc)


def clear_stall(folder: Path) -> None:
    try:
        (folder / STALL_MARKER).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not clear HeyGem's stall marker: %s", exc)


def stalled(folder: Path) -> str | None:
    """A sentence about the recorded stall, or None."""
    try:
        record = json.loads((folder / STALL_MARKER).read_text())
    except (OSError, ValueError):
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record.get("since", 0))))
    return f"stalled: task {record.get('code')} stuck at {record.get('progress'):g}% since {when}; {RESTART_HINT}"


def heygem_state(settings: EngineSettings) -> str | None:
    """``ok`` or what is wrong; None when no HeyGem service is configured."""
    if not settings.heygem_url:
        return None
    client = HeyGemClient(settings.heygem_url, min(settings.http_timeout_s, PROBE_TIMEOUT_S))
    try:
        client.probe()
    except EngineError as exc:
        return f"unreachable: {exc}"
    finally:
        client.close()
    if settings.heygem_data_dir is not None:
        folder = SharedFolder.from_settings(settings)
        problem = folder.problem()
        if problem is not None:
            return f"shared folder: {problem}"
        stall = stalled(folder.path)
        if stall is not None:
            return stall
    return "ok"
