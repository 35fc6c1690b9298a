"""Waiting for a bridge job inside the tool call's deadline.

Polls back off from 0.5 s to 5 s (x1.5 each time): a short render is seen finishing within a second or two,
and a long wait costs about a hundred requests instead of the thousand a fixed 0.5 s made in 540 s. The wait
ends at ``max_wait_s`` or earlier when the call must keep the rest of its time for the file; no pause reaches
past that end, and no request past the call's deadline (the client caps each one by it). A job still running
then is no failure: the caller returns its id for ``get_video``.

Like call_limits, this imports no SDK, so the server's tests drive it with a clock they control.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from tools.bridge_client import OutOfTime
from tools.call_limits import CallDeadline

FINAL = frozenset({"succeeded", "failed", "canceled"})
POLL_FIRST_S = 0.5
POLL_MOST_S = 5.0
POLL_GROWTH = 1.5

Job = dict[str, Any]


def poll_delays() -> Iterator[float]:
    """The pauses between polls: 0.5 s, 0.75 s, 1.125 s, ... up to 5 s, then 5 s for good."""
    delay = POLL_FIRST_S
    while True:
        yield delay
        delay = min(POLL_MOST_S, delay * POLL_GROWTH)


def watch(job: Job, poll: Callable[[str], Job], deadline: CallDeadline, max_wait_s: float,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[Job]:
    """Yield each state of ``job`` as it is seen, the given one first, until it ends or the wait is over: the
    last one yielded is the latest. A poll cut short by the call's deadline ends the wait with the state before."""
    wait_ends_at = deadline.wait_ends_at(max_wait_s)
    delays = poll_delays()
    yield job
    while job["status"] not in FINAL:
        left = wait_ends_at - deadline.clock()
        if left <= 0:
            break
        sleep(min(next(delays), left))
        try:
            job = poll(job["id"])
        except OutOfTime:
            break
        yield job
