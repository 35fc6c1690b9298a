"""Faults, each injected for real, each with "nothing lost" checked: a full disk (a small tmpfs), a damaged
avatar template discovered mid-render, the API restarted mid-job, Redis restarted with jobs queued and
running, and the object store unreachable during upload. Where the fault must strike mid-render, the render
is held at lip-sync (tests/standins/render_gate.py) until the fault is in place, whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from minio import Minio

from bridge.auth import SCOPES, mint_token
from bridge.storage import Storage
from tests.bridge_fixtures import (
    AUD,
    FINAL,
    ISS,
    RedisServer,
    TcpProxy,
    bridge_with_worker,
    free_port,
    poll_job,
    run_bridge_serve,
    run_redis_server,
    settings_env,
    worker_env,
)
from tests.s3_fixture import S3Server, run_radosgw
from tests.standins.render_gate import RenderGate

pytestmark = pytest.mark.slow
PHOTO = "astronaut-photo"
FAST = {"reaper_interval_s": 0.5, "job_lease_s": 2.0, "job_heartbeat_s": 0.4}
TEXT = "This sentence takes the renderer a few seconds, long enough to break something in the middle."


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small RAM filesystem: a disk that really fills up (needs root, as `make setup` does)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(root: Path, leave_bytes: int) -> Path:
    filler = root / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(root).free - leave_bytes))
    return filler


def test_full_storage_fails_the_job_cleanly_and_recovers(tmp_path: Path, redis_server: RedisServer,
                                                         storage: Path) -> None:
    with tmpfs(tmp_path / "nfs", "24m") as root, bridge_with_worker(
            root, redis_server.url, storage, log_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
            min_free_bytes=1 << 20, **FAST) as bridge:
        assert bridge.client.get("/readyz").status_code == 200
        filler = fill(root, 64 * 1024)
        ready = bridge.client.get("/readyz")
        assert ready.status_code == 503 and "low disk space" in ready.get_json()["detail"]
        job = bridge.wait(bridge.submit({"text": TEXT, "avatar_id": PHOTO}).get_json()["id"])
        assert job["status"] == "failed" and job["error"]["code"] == "storage_full", job
        assert "storage is full" in job["error"]["message"]
        storage_dir = Storage(root).job_dir(job["id"])
        assert not storage_dir.exists() or not any(storage_dir.rglob("*.*")), list(storage_dir.rglob("*"))
        assert not list(root.rglob("*.partial*"))  # no half-written file anywhere

        filler.unlink()
        assert bridge.client.get("/readyz").status_code == 200
        again = bridge.wait(bridge.submit({"text": "Space again.", "avatar_id": PHOTO}).get_json()["id"])
        assert again["status"] == "succeeded", again


def test_a_template_damaged_mid_render_fails_with_the_engines_message(tmp_path: Path, redis_server: RedisServer,
                                                                      storage: Path) -> None:
    engine_root = tmp_path / "engine"
    for avatar_id in (PHOTO, "astronaut"):
        shutil.copytree(storage / "avatars" / avatar_id, engine_root / "avatars" / avatar_id)
    forward = engine_root / "avatars" / "astronaut" / "forward.mp4"
    forward.write_bytes(forward.read_bytes()[: forward.stat().st_size // 3])  # passes until a third of the way
    with bridge_with_worker(tmp_path / "bridge", redis_server.url, engine_root, **FAST) as bridge:
        broken = bridge.wait(bridge.submit({"text": TEXT, "avatar_id": "astronaut"}).get_json()["id"])
        assert broken["status"] == "failed" and broken["error"]["code"] == "corrupt_media", broken
        assert "template video is damaged" in broken["error"]["message"]
        assert "add the avatar again" in broken["error"]["message"]
        fine = bridge.wait(bridge.submit({"text": "Still here.", "avatar_id": PHOTO}).get_json()["id"])
        assert fine["status"] == "succeeded" and fine["attempts"] == 1  # the same worker serves on


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(api_key, 'tenant-a', sorted(SCOPES), AUD, ISS)}"}


def _poll(base: str, api_key: str, job_id: str, until: frozenset[str], stage: str | None = None) -> dict[str, Any]:
    def fetch() -> dict[str, Any] | None:  # None while the API is down or still booting
        try:
            return dict(requests.get(f"{base}/v1/jobs/{job_id}", headers=_headers(api_key), timeout=10).json())
        except requests.RequestException:
            return None

    return poll_job(job_id, fetch, until, stage, timeout_s=90)


def test_restarting_the_api_mid_job_loses_nothing(tmp_path: Path, redis_server: RedisServer, storage: Path) -> None:
    root = tmp_path / "bridge"
    gate = RenderGate(tmp_path / "gate")
    with bridge_with_worker(root, redis_server.url, storage, gate=gate, **FAST) as bridge, gate.armed() as arming:
        env = worker_env(bridge.settings, storage, **settings_env(**FAST))
        port = free_port()
        with run_bridge_serve(env, root / "serve-1.log", port=port) as base:
            reply = requests.post(f"{base}/v1/jobs", json={"text": TEXT, "avatar_id": "astronaut"},
                                  headers=_headers(bridge.api_key), timeout=30)
            job_id = reply.json()["id"]
            _poll(base, bridge.api_key, job_id, frozenset({"running"}), stage="lipsync")  # held there
        arming.open()  # the render goes on while no API runs
        with run_bridge_serve(env, root / "serve-2.log", port=port) as base:  # same address, new process
            done = _poll(base, bridge.api_key, job_id, FINAL)
            assert done["status"] == "succeeded" and done["attempts"] == 1, done
            video = requests.get(done["outputs"][0]["video_url"], timeout=30)
            assert video.status_code == 200 and len(video.content) == done["outputs"][0]["size_bytes"]


def test_restarting_redis_with_jobs_queued_and_running_loses_none(tmp_path: Path, storage: Path) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    port = free_port()
    gate = RenderGate(tmp_path / "gate")
    with run_redis_server(redis_dir, port=port, appendonly=True) as server, \
            bridge_with_worker(tmp_path / "bridge", server.url, storage, gate=gate, **FAST) as bridge, \
            gate.armed() as arming:
        jobs = [bridge.submit({"text": f"{TEXT} Number {n}.", "avatar_id": PHOTO}).get_json()["id"] for n in range(3)]
        poll_job(jobs[0], lambda: bridge.get(jobs[0]).get_json(), frozenset({"running"}), "lipsync")  # held there
        arming.disarm()
        server.process.terminate()
        server.process.wait(timeout=10)
        arming.open()  # the render goes on without Redis
        time.sleep(1.0)  # the worker and the API lose Redis for a moment
        with run_redis_server(redis_dir, port=port, appendonly=True):
            done = [bridge.wait(job_id, timeout_s=120) for job_id in jobs]
            assert [d["status"] for d in done] == ["succeeded"] * 3, done
            for d in done:
                outputs = sorted(p.name for p in Storage(bridge.settings.storage_root).outputs_dir(d["id"]).iterdir())
                assert outputs == ["poster.jpg", "video.mp4"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with run_radosgw(tmp_path_factory.mktemp("radosgw")) as server:
        yield server


def test_object_store_down_during_upload_is_retried(tmp_path: Path, redis_server: RedisServer, storage: Path,
                                                     s3: S3Server) -> None:
    host, port = s3.endpoint.split(":")
    proxy = TcpProxy(host, int(port))  # the workers' only way to S3; clients get links to S3 itself
    overrides = {"link_backend": "minio", "s3_endpoint": proxy.endpoint, "s3_public_endpoint": s3.endpoint,
                 "s3_secure": False, "s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key,
                 "s3_bucket": "outage", **FAST}
    with bridge_with_worker(tmp_path / "bridge", redis_server.url, storage, **overrides) as bridge:
        job_id = bridge.submit({"text": "Uploaded in the end.", "avatar_id": PHOTO}).get_json()["id"]
        log = tmp_path / "bridge" / "worker.log"
        deadline = time.monotonic() + 60
        while "retrying in" not in log.read_text(errors="replace"):  # the S3 endpoint refuses connections
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        proxy.start()  # S3 is back
        try:
            done = bridge.wait(job_id, timeout_s=90)
        finally:
            proxy.stop()
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert requests.get(done["outputs"][0]["video_url"], timeout=30).status_code == 200
        client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
        names = sorted(o.object_name for o in client.list_objects("outage", prefix=f"jobs/{job_id}/", recursive=True))
        assert names == [f"jobs/{job_id}/poster.jpg", f"jobs/{job_id}/video.mp4"]  # one of each
