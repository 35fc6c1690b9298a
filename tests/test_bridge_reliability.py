"""No job is lost: real redis-server, real ``python -m bridge worker`` processes, killed the hard way.

Workers run with a short lease (2 s) and reaper interval (0.5 s) so a dead worker is noticed within
seconds instead of the production default of half a minute. A test that strikes mid-render holds the
render at lip-sync with tests/standins/render_gate.py, so it never depends on how fast the machine renders.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.db import Database, Owner
from bridge.keys import KeyStore
from bridge.reaper import BrokerMessages, Reaper
from bridge.settings import BridgeSettings
from bridge.storage import Storage
from bridge.tasks import make_celery, publish
from engine import EngineSettings
from tests.bridge_fixtures import (
    REPO,
    Bridge,
    BridgeWorker,
    RedisServer,
    kill_hard,
    make_settings,
    run_bridge_worker,
    run_redis_server,
    started_attempts,
    worker_children,
    worker_env,
)
from tests.standins.render_gate import RenderGate

AVATAR = "astronaut-photo"
FAST_REAPER = {"job_lease_s": 2.0, "job_heartbeat_s": 0.4, "reaper_interval_s": 0.5}
SHORT = "Hello there, this is a short one."

pytestmark = pytest.mark.slow


def _env(settings: BridgeSettings, storage: Path, gate: RenderGate | None) -> dict[str, str]:
    return worker_env(settings, storage, **{f"BRIDGE_{k.upper()}": str(v) for k, v in FAST_REAPER.items()},
                      **(gate.env if gate else {}))


def _bridge(root: Path, redis_url: str, storage: Path) -> Bridge:
    settings = make_settings(root, redis_url, **FAST_REAPER)
    engine_settings = EngineSettings(_env_file=None, storage_root=storage)  # type: ignore[call-arg]
    app = create_app(settings, engine_settings=engine_settings)
    return Bridge(app, app.test_client(), settings, engine_settings, KeyStore(settings.keys_path).create())


@contextlib.contextmanager
def _stack(tmp_path: Path, storage: Path) -> Iterator[tuple[RedisServer, Bridge]]:
    with run_redis_server(tmp_path) as server:
        yield server, _bridge(tmp_path / "bridge", server.url, storage)


@contextlib.contextmanager
def _worker(bridge: Bridge, storage: Path, name: str, module: str = "bridge",
            gate: RenderGate | None = None) -> Iterator[BridgeWorker]:
    """A real worker; with ``gate``, one whose renders the gate can hold at lip-sync."""
    log = bridge.settings.storage_root / f"{name}.log"
    module = "tests.standins.render_gate" if gate else module
    with run_bridge_worker(_env(bridge.settings, storage, gate), log, REPO, module=module) as worker:
        yield worker


def _submit(bridge: Bridge, text: str) -> str:
    response = bridge.submit({"text": text, "avatar_id": AVATAR})
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def _wait_rendering(bridge: Bridge, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Until the worker is inside the lip-sync loop, i.e. really mid-job (held there while the gate is armed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = bridge.get(job_id).get_json()
        if body["status"] == "running" and body["stage"] == "lipsync":
            return dict(body)
        assert body["status"] in {"queued", "running"}, body
        assert time.monotonic() < deadline, f"job {job_id} never reached lipsync: {body}"
        time.sleep(0.05)


def _outputs(bridge: Bridge, job_id: str) -> list[str]:
    storage = Storage(bridge.settings.storage_root)
    return sorted(p.name for p in storage.outputs_dir(job_id).iterdir())


def _assert_one_clean_output(bridge: Bridge, job_id: str) -> None:
    assert _outputs(bridge, job_id) == ["poster.jpg", "video.mp4"]  # no temp files from a dead attempt
    assert not (Storage(bridge.settings.storage_root).job_dir(job_id) / "work").exists()


def test_two_workers_render_two_jobs_at_the_same_time(tmp_path: Path, storage: Path) -> None:
    gate = RenderGate(tmp_path / "gate")
    with _stack(tmp_path, storage) as (_, bridge), _worker(bridge, storage, "w1", gate=gate) as w1, \
            _worker(bridge, storage, "w2", gate=gate) as w2:
        with gate.armed():
            jobs = [_submit(bridge, SHORT), _submit(bridge, SHORT)]
            for job_id in jobs:  # both held mid-render at once: only two workers rendering side by side get here
                _wait_rendering(bridge, job_id)
        done = [bridge.wait(job_id) for job_id in jobs]
        assert [d["status"] for d in done] == ["succeeded", "succeeded"], done
        a, b = done
        assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"], "the jobs ran one by one"
        assert sorted(len(started_attempts(w.log, j)) for w in (w1, w2) for j in jobs) == [0, 0, 1, 1]
        assert all(len(started_attempts(w1.log, j)) + len(started_attempts(w2.log, j)) == 1 for j in jobs)


def test_kill_9_of_a_whole_worker_mid_job_reruns_it_once(tmp_path: Path, storage: Path) -> None:
    gate = RenderGate(tmp_path / "gate")
    with _stack(tmp_path, storage) as (_, bridge):
        with _worker(bridge, storage, "doomed", gate=gate) as doomed, gate.armed():
            job_id = _submit(bridge, SHORT)
            _wait_rendering(bridge, job_id)
            kill_hard(doomed)  # main process and render child: the message stays unacked in Redis
        assert bridge.get(job_id).get_json()["status"] == "running"
        with _worker(bridge, storage, "rescuer") as rescuer:
            done = bridge.wait(job_id)
            assert done["status"] == "succeeded" and done["attempts"] == 2, done
            assert started_attempts(doomed.log, job_id) == [1] and started_attempts(rescuer.log, job_id) == [2]
            _assert_one_clean_output(bridge, job_id)
            video = Storage(bridge.settings.storage_root).output_path(job_id, "video.mp4").stat()

            publish(make_celery(bridge.settings, publisher=True), bridge.settings.queue, job_id)  # a late duplicate
            deadline = time.monotonic() + 20
            while f"job {job_id} is already succeeded" not in rescuer.log.read_text(errors="replace"):
                assert time.monotonic() < deadline, "the duplicate message was not consumed"
                time.sleep(0.1)
        after = bridge.get(job_id).get_json()
        assert after["attempts"] == 2 and after["status"] == "succeeded"
        assert Storage(bridge.settings.storage_root).output_path(job_id, "video.mp4").stat().st_mtime_ns == \
            video.st_mtime_ns  # written exactly once


def test_kill_9_of_the_render_process_retries_at_once(tmp_path: Path, storage: Path) -> None:
    gate = RenderGate(tmp_path / "gate")
    with _stack(tmp_path, storage) as (_, bridge), _worker(bridge, storage, "w", gate=gate) as worker:
        with gate.armed() as arming:
            job_id = _submit(bridge, SHORT)
            _wait_rendering(bridge, job_id)
            arming.disarm()  # the retry renders straight through
            [child] = worker_children(worker)
            os.kill(child, signal.SIGKILL)  # the OOM killer's way; Celery's main process survives
        done = bridge.wait(job_id)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        assert started_attempts(worker.log, job_id) == [1, 2]
        _assert_one_clean_output(bridge, job_id)


def test_a_job_that_always_kills_its_worker_fails_after_n_attempts(tmp_path: Path, storage: Path) -> None:
    with _stack(tmp_path, storage) as (_, bridge), \
            _worker(bridge, storage, "w", module="tests.standins.crashing_worker") as worker:
        poison = _submit(bridge, "CRASH, please.")
        done = bridge.wait(poison)
        assert done["status"] == "failed" and done["attempts"] == bridge.settings.job_max_attempts == 3, done
        assert done["error"]["code"] == "worker_crashed_repeatedly"
        assert "3 times" in done["error"]["message"]
        assert started_attempts(worker.log, poison) == [1, 2, 3]
        healthy = bridge.wait(_submit(bridge, SHORT))  # the same worker still serves everyone else
        assert healthy["status"] == "succeeded" and healthy["attempts"] == 1, healthy


def test_restarting_redis_and_the_api_with_queued_jobs_loses_none(tmp_path: Path, storage: Path) -> None:
    root = tmp_path / "bridge"
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    with run_redis_server(redis_dir, appendonly=True) as server:
        port = server.port
        bridge = _bridge(root, server.url, storage)
        queued = [_submit(bridge, f"Queued job number {n}.") for n in range(3)]
    assert bridge.submit({"text": "Submitted while Redis is down.", "avatar_id": AVATAR}).status_code == 503
    # What a publish that failed after the row was written leaves behind: a queued row with no message.
    row, _ = bridge.app.extensions["bridge"].db.create_job(Owner(bridge.kid, "tenant-a"),
                                                            {"text": "Never published.", "avatar_id": AVATAR})
    orphan = row.id
    with run_redis_server(redis_dir, port=port, appendonly=True) as server:
        restarted = _bridge(root, server.url, storage)  # a new API process over the same table
        restarted.api_key = bridge.api_key
        with _worker(restarted, storage, "w"):
            done = {job_id: restarted.wait(job_id) for job_id in [*queued, orphan]}
    assert {d["status"] for d in done.values()} == {"succeeded"}, done
    assert all(d["attempts"] == 1 for d in done.values())


def test_jobs_whose_messages_redis_forgot_are_published_again(tmp_path: Path, storage: Path) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    with run_redis_server(redis_dir) as server:  # no persistence: a restart empties the queue
        port = server.port
        bridge = _bridge(tmp_path / "bridge", server.url, storage)
        queued = [_submit(bridge, f"Forgotten job number {n}.") for n in range(2)]
    with run_redis_server(redis_dir, port=port) as server, _worker(bridge, storage, "w") as worker:
        done = [bridge.wait(job_id) for job_id in queued]
        assert [d["status"] for d in done] == ["succeeded", "succeeded"], done
        assert "the broker had no message for it" in worker.log.read_text(errors="replace")


def test_each_queues_reaper_republishes_only_its_own_jobs(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'queues.db'}")
    db.create_all()
    mine, _ = db.create_job(Owner("k", "t"), {"text": "a", "avatar_id": AVATAR}, queue="render")
    theirs, _ = db.create_job(Owner("k", "t"), {"text": "b", "avatar_id": AVATAR}, queue="gpu-large")
    published: list[str] = []
    reaper = Reaper(db, "render", published.append, max_attempts=3, in_broker=BrokerMessages, grace_s=0.0)
    assert reaper.sweep().published == [mine.id] and published == [mine.id]
    other: list[str] = []
    Reaper(db, "gpu-large", other.append, max_attempts=3, in_broker=BrokerMessages, grace_s=0.0).sweep()
    assert other == [theirs.id]
