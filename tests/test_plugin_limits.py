"""Dify's limits on a plugin call, on the plugin's side: one deadline per call that the wait, every request to the
bridge and the MP4 download keep, polls that back off from 0.5 s to 5 s, and the admin's file cap.

Time here is a clock the test moves (no test sleeps on a real clock, and none asserts how long anything took);
the HTTP sides are real servers on loopback. The stdio tests show the same paths through the real SDK.
"""

from __future__ import annotations

import http.server
import itertools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.keys import KeyStore
from tests.bridge_fixtures import free_port, run_receiver, was_connected
from tools import bridge_client
from tools.bridge_client import BridgeClient, BridgeConfig, BridgeError, FileTooLarge, OutOfTime
from tools.call_limits import (
    DIFY_CALL_LIMIT_S,
    FILE_RESERVE_S,
    HANDOVER_S,
    MARGIN_S,
    MIB,
    MIN_DOWNLOAD_S,
    CallDeadline,
    file_cap_bytes,
    link_only_reason,
)
from tools.job_watch import POLL_MOST_S, poll_delays, watch

JOB_ID = "0123456789abcdef0123456789abcdef"


class FakeClock:
    """Monotonic seconds that move only when told: by ``sleep``, by ``advance``, or by ``tick`` per reading."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick
        self.slept: list[float] = []

    def __call__(self) -> float:
        now = self.now
        self.now += self.tick
        return now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Bridge:
    """The bridge's job endpoint as the wait sees it: each poll is recorded with the clock's time."""

    def __init__(self, clock: FakeClock, states: Iterator[str], poll_cost_s: float = 0.0) -> None:
        self.clock, self.states, self.poll_cost_s = clock, states, poll_cost_s
        self.polled_at: list[float] = []

    def poll(self, job_id: str) -> dict[str, Any]:
        self.polled_at.append(self.clock.now)
        self.clock.advance(self.poll_cost_s)
        return {"id": job_id, "status": next(self.states), "stage": "lipsync", "progress": 0.5}


def queued() -> dict[str, Any]:
    return {"id": JOB_ID, "status": "queued"}


# --- the call's deadline ------------------------------------------------------------------------


def test_one_deadline_per_call_keeps_time_for_the_file() -> None:
    clock = FakeClock()
    started = clock.now
    deadline = CallDeadline.start(clock)
    assert deadline.ends_at == started + DIFY_CALL_LIMIT_S - MARGIN_S  # 585 s: before the daemon's 600 s
    # The longest wait the tools allow (540 s) stops early enough to leave a minute for the file.
    assert deadline.wait_ends_at(540) == deadline.ends_at - FILE_RESERVE_S
    assert deadline.wait_ends_at(60) == started + 60
    clock.advance(deadline.ends_at - HANDOVER_S - MIN_DOWNLOAD_S - started)
    assert deadline.time_for_file()
    clock.advance(0.5)
    assert not deadline.time_for_file()  # the download would not have its minimum any more
    clock.advance(1000)
    assert deadline.left() == 0 and deadline.left(deadline.download_ends_at) == 0


def test_polls_back_off_from_half_a_second_to_five() -> None:
    first = list(itertools.islice(poll_delays(), 9))
    assert first == [0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875, 5.0, 5.0, 5.0]


def test_the_longest_wait_makes_about_a_hundred_requests_and_ends_in_time() -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)
    bridge = Bridge(clock, itertools.repeat("running"))
    seen = list(watch(queued(), bridge.poll, deadline, 540, clock.sleep))
    wait_end = deadline.ends_at - FILE_RESERVE_S
    # Before: a poll every 0.5 s for 540 s, about 1,080 requests, and 15 s short of the daemon's limit.
    assert len(bridge.polled_at) == 109 and len(seen) == 110
    assert bridge.polled_at[-1] == wait_end and clock.now == wait_end  # no pause reaches past the wait's end
    assert max(clock.slept) == POLL_MOST_S
    assert deadline.left() == FILE_RESERVE_S and deadline.time_for_file()


def test_a_short_wait_polls_at_the_backoff_times_and_stops_on_time() -> None:
    clock = FakeClock()
    started = clock.now
    deadline = CallDeadline.start(clock)
    bridge = Bridge(clock, itertools.repeat("queued"))
    seen = list(watch(queued(), bridge.poll, deadline, 5, clock.sleep))
    assert [t - started for t in bridge.polled_at] == [0.5, 1.25, 2.375, 4.0625, 5.0]
    assert seen[-1]["status"] == "queued" and clock.now == started + 5


def test_slow_polls_never_push_the_wait_past_its_end() -> None:
    clock = FakeClock()
    started = clock.now
    deadline = CallDeadline.start(clock)
    bridge = Bridge(clock, itertools.repeat("running"), poll_cost_s=7.0)  # a bridge taking 7 s per answer
    list(watch(queued(), bridge.poll, deadline, 30, clock.sleep))
    # Every poll starts by the wait's end; only the last poll's own answer time comes after it.
    assert all(t <= started + 30 for t in bridge.polled_at)
    assert clock.now <= started + 30 + 7.0


def test_a_finished_job_ends_the_wait_at_once() -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)
    bridge = Bridge(clock, iter(["running", "running", "succeeded"]))
    seen = list(watch(queued(), bridge.poll, deadline, 540, clock.sleep))
    assert [s["status"] for s in seen] == ["queued", "running", "running", "succeeded"]
    assert len(bridge.polled_at) == 3


def test_a_call_that_started_late_does_not_wait_at_all() -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)
    clock.advance(DIFY_CALL_LIMIT_S - MARGIN_S - FILE_RESERVE_S + 1)  # e.g. a long upload before the submit
    bridge = Bridge(clock, itertools.repeat("running"))
    assert list(watch(queued(), bridge.poll, deadline, 240, clock.sleep)) == [queued()]
    assert bridge.polled_at == [] and clock.slept == []


def test_a_poll_cut_short_by_the_deadline_ends_the_wait_with_the_state_before() -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)

    def poll(job_id: str) -> dict[str, Any]:
        raise OutOfTime("the bridge did not answer before this tool call's time ran out")

    assert list(watch(queued(), poll, deadline, 240, clock.sleep)) == [queued()]


def test_a_finished_video_is_a_file_only_when_it_fits_the_cap_and_the_time_left() -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)
    cap = 50 * MIB
    assert link_only_reason(49 * MIB, cap, deadline, JOB_ID) is None
    assert link_only_reason(cap, cap, deadline, JOB_ID) is None  # Dify takes a file of exactly its limit
    too_big = link_only_reason(62 * MIB, cap, deadline, JOB_ID)
    assert too_big is not None and "The video is 62 MB" in too_big, too_big
    assert '"Largest video sent as a file (MB)" (50 MB)' in too_big and "PLUGIN_MAX_FILE_SIZE" in too_big
    clock.advance(deadline.ends_at - clock.now - 20)  # ready 20 s before the call's end: too late for the file
    late = link_only_reason(MIB, cap, deadline, JOB_ID)
    assert late is not None and "had 20 s left of the 600 s" in late and f"job id {JOB_ID}" in late, late
    assert "only its link is returned" in late


# --- the client keeps the deadline --------------------------------------------------------------


@pytest.fixture
def api_key(tmp_path: Path) -> str:
    return KeyStore(tmp_path / "keys.json").create()


def client(api_key: str, base: str, deadline: CallDeadline) -> BridgeClient:
    config = BridgeConfig.from_credentials({"bridge_url": base, "api_key": api_key})
    return BridgeClient(config, "dify-user-7", deadline=deadline)


def test_no_request_starts_after_the_deadline(api_key: str, trap: socket.socket) -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)
    clock.advance(DIFY_CALL_LIMIT_S)
    with pytest.raises(OutOfTime, match="no time left"):
        client(api_key, f"http://127.0.0.1:{trap.getsockname()[1]}", deadline).job(JOB_ID)
    assert not was_connected(trap)


def test_a_bridge_that_does_not_answer_is_given_only_the_time_left(api_key: str, trap: socket.socket) -> None:
    # The trap accepts the connection (the kernel does) and never answers: without the deadline the client
    # would wait its 30 s read timeout; with 0.3 s left it gives up when they are over, and says so.
    deadline = CallDeadline.start(limit_s=MARGIN_S + 0.3)
    with pytest.raises(OutOfTime, match="did not answer before this tool call's time ran out"):
        client(api_key, f"http://127.0.0.1:{trap.getsockname()[1]}", deadline).job(JOB_ID)


def test_no_retry_pause_outlasts_the_deadline(api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    paused: list[float] = []
    monkeypatch.setattr(bridge_client.time, "sleep", paused.append)
    closed = f"http://127.0.0.1:{free_port()}"
    clock = FakeClock()
    with pytest.raises(BridgeError, match="Cannot reach the bridge"):
        client(api_key, closed, CallDeadline.start(clock)).job(JOB_ID)
    assert paused == [1, 2]  # three attempts with time to spare
    clock.advance(DIFY_CALL_LIMIT_S - MARGIN_S - 0.5)
    paused.clear()
    with pytest.raises(BridgeError, match="Cannot reach the bridge"):
        client(api_key, closed, CallDeadline(clock.now + 0.5, clock)).job(JOB_ID)
    assert paused == []  # half a second left: the error now, not a pause past the deadline


# --- the MP4 download has a total deadline ------------------------------------------------------


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "served" / "video.mp4"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * (8 * 1024))  # 2 MiB: 32 reads of 64 KiB
    return path


def test_the_download_returns_the_whole_file_in_time(api_key: str, video: Path) -> None:
    with run_receiver(video.parent) as server:
        got = client(api_key, server.base, CallDeadline.start()).download(f"{server.base}/video.mp4", 50 * MIB)
    assert got == video.read_bytes()


def test_a_file_over_the_cap_is_not_read(api_key: str, video: Path) -> None:
    with run_receiver(video.parent) as server, pytest.raises(FileTooLarge, match=r"2\.0 MB"):
        client(api_key, server.base, CallDeadline.start()).download(f"{server.base}/video.mp4", MIB)


def test_a_download_stops_when_its_time_is_over(api_key: str, video: Path) -> None:
    clock = FakeClock(tick=1.0)  # every reading of the clock is a second later: a slow link
    deadline = CallDeadline(clock.now + 10, clock)
    with run_receiver(video.parent) as server, pytest.raises(OutOfTime, match="had not fully arrived"):
        client(api_key, server.base, deadline).download(f"{server.base}/video.mp4", 50 * MIB)


def test_a_download_stops_before_the_calls_deadline_when_told(api_key: str, video: Path) -> None:
    clock = FakeClock()
    deadline = CallDeadline.start(clock)
    clock.advance(deadline.download_ends_at - clock.now)  # the hand-over's share of the call is not the download's
    with run_receiver(video.parent) as server, pytest.raises(OutOfTime, match="no time was left"):
        client(api_key, server.base, deadline).download(f"{server.base}/video.mp4", 50 * MIB,
                                                        deadline.download_ends_at)


def test_a_stalled_download_is_given_up_within_the_time_left(api_key: str) -> None:
    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            return None

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(4 * MIB))
            self.end_headers()
            self.wfile.write(b"\0" * MIB)
            self.wfile.flush()
            release.wait(60)  # sends nothing more until the test is over

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    clock = FakeClock()  # frozen: only the link's silence can end this download
    try:
        with pytest.raises(OutOfTime, match="stopped sending"):
            client(api_key, base, CallDeadline(clock.now + 0.5, clock)).download(f"{base}/video.mp4", 50 * MIB)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


# --- the admin's file cap -----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "cap"), [
    (None, 50 * MIB), ("", 50 * MIB), (" ", 50 * MIB),  # unset: Dify's default PLUGIN_MAX_FILE_SIZE
    ("30", 30 * MIB), ("50", 50 * MIB), ("200", 200 * MIB), ("0.5", MIB // 2), ("0", 0),
])
def test_the_file_cap_follows_the_setting(setting: str | None, cap: int) -> None:
    assert file_cap_bytes({} if setting is None else {"max_file_mb": setting}) == cap


@pytest.mark.parametrize("setting", ["fifty", "50MB", "-1", "nan", "inf", "1e9", "2048"])
def test_a_file_cap_that_is_no_size_is_refused_with_how_to_fix_it(setting: str) -> None:
    with pytest.raises(ValueError, match="Largest video sent as a file") as refused:
        file_cap_bytes({"max_file_mb": setting})
    assert "PLUGIN_MAX_FILE_SIZE" in str(refused.value) and repr(setting) in str(refused.value)
