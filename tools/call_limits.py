"""Dify's limits on one tool call, time and file size, and the plan that keeps a call inside them.

Time: Dify's plugin daemon ends a tool call ``PLUGIN_MAX_EXECUTION_TIMEOUT`` seconds (600 by default) after it
hands the request to the plugin, with "killed by timeout"; whatever the call had not yet said is lost, a
finished video included. So a call takes one deadline when it starts, a margin before that limit, and
everything it does draws on it: the wait for the render, each request to the bridge, the MP4 download and
the hand-over of the file to Dify. The wait stops early enough to leave time for the file, and when too little
is left anyway, the call returns the link and the job id instead of the file.

Size: Dify's API refuses a plugin file above ``PLUGIN_MAX_FILE_SIZE`` and fails the whole call with it. That
limit is 50 MB by default and configurable since Dify PR #30887 (January 2026); before, it was a fixed 30 MB.
The admin's "Largest video sent as a file" setting mirrors it; a larger video goes out as its link.

Nothing here imports the SDK, so the server's test environment checks it with a clock it controls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DIFY_CALL_LIMIT_S = 600.0
"""The plugin daemon's ``PLUGIN_MAX_EXECUTION_TIMEOUT`` default."""
MARGIN_S = 15.0
"""The call ends this long before the daemon would end it: the request's way in, the last messages' way out."""
FILE_RESERVE_S = 60.0
"""Kept back from the wait for fetching the MP4 from the bridge and handing it to Dify."""
HANDOVER_S = 15.0
"""Kept back from the download for the hand-over: the SDK sends the file in 8 KiB chunks, Dify stores it. The
plugin's part of it for 50 MiB is about 2 s (tests/bench/plugin_handover_bench.py); the rest is Dify's."""
MIN_DOWNLOAD_S = 10.0
"""With less time than this for the download, the file is not tried at all."""

MIB = 1024 * 1024
FILE_MB_SETTING = "max_file_mb"
FILE_MB_LABEL = "Largest video sent as a file (MB)"
DIFY_FILE_MB = 50.0
"""Dify's ``PLUGIN_MAX_FILE_SIZE`` default, in Dify's MB (MiB)."""
FILE_MB_CEILING = 1024.0
"""The plugin holds the video in memory while it hands it over; no Dify default comes near this."""

Clock = Callable[[], float]


@dataclass(frozen=True)
class CallDeadline:
    """When this call must have said everything, on ``clock`` (monotonic seconds)."""

    ends_at: float
    clock: Clock = field(default=time.monotonic, compare=False)

    @classmethod
    def start(cls, clock: Clock = time.monotonic, limit_s: float = DIFY_CALL_LIMIT_S) -> CallDeadline:
        return cls(clock() + limit_s - MARGIN_S, clock)

    def left(self, until: float | None = None) -> float:
        """Seconds left before ``until`` (never past the call's end), or before the call's end."""
        end = self.ends_at if until is None else min(until, self.ends_at)
        return max(0.0, end - self.clock())

    def wait_ends_at(self, max_wait_s: float) -> float:
        """When a wait that starts now must stop: after ``max_wait_s``, or sooner to leave time for the file."""
        return min(self.clock() + max_wait_s, self.ends_at - FILE_RESERVE_S)

    @property
    def download_ends_at(self) -> float:
        return self.ends_at - HANDOVER_S

    def time_for_file(self) -> bool:
        return self.left(self.download_ends_at) >= MIN_DOWNLOAD_S


def file_cap_bytes(credentials: Mapping[str, Any]) -> int:
    """The admin's cap on a video sent as a file, in bytes; Dify's default when the setting is empty.

    Raises ValueError, worded for the admin, when the setting is not a number from 0 to ``FILE_MB_CEILING``.
    """
    raw = credentials.get(FILE_MB_SETTING)
    if raw is None or not str(raw).strip():
        return int(DIFY_FILE_MB * MIB)
    try:
        mb = float(str(raw).strip())
    except ValueError:
        mb = math.nan
    if not 0 <= mb <= FILE_MB_CEILING:  # NaN fails both comparisons
        raise ValueError(f"{FILE_MB_LABEL} must be a number of MB from 0 to {FILE_MB_CEILING:.0f}, not "
                         f"{str(raw)[:40]!r}: set it to Dify's PLUGIN_MAX_FILE_SIZE in MB ({DIFY_FILE_MB:.0f} by "
                         "default; 30 on Dify releases from before mid-January 2026), or to 0 to send links only")
    return int(mb * MIB)


def megabytes(size: float) -> str:
    return f"{size / MIB:.3g} MB"


def link_only_reason(size_bytes: int, cap_bytes: int, deadline: CallDeadline, job_id: str) -> str | None:
    """Why a finished video goes out as its link only, in words for the user; None when the file may be tried.

    A video above the admin's cap would make Dify fail the whole call; one that is ready too close to the call's
    end could not be downloaded and handed over before the daemon ends it, and would be lost with the call.
    """
    if size_bytes > cap_bytes:
        return (f"The video is {megabytes(size_bytes)}, more than \"{FILE_MB_LABEL}\" ({megabytes(cap_bytes)}) "
                f"allows, so only its link is returned. Dify takes plugin files up to its PLUGIN_MAX_FILE_SIZE "
                f"({DIFY_FILE_MB:.0f} MB by default); an admin may raise both.")
    if not deadline.time_for_file():
        return (f"The video is ready, but this call had {deadline.left():.0f} s left of the "
                f"{DIFY_CALL_LIMIT_S:.0f} s Dify gives a tool call: too little to hand over the file, so only its "
                f"link is returned. get_video with job id {job_id} returns the file in a new call.")
    return None
