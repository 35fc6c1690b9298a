"""Several hosts, for real, on one machine: the bridge as a company deploys it, over a network.

Four network namespaces on a private segment (``tests/netns.py``), each with its own address and
hostname: ``data`` runs Redis and PostgreSQL (Debian's servers, listening on the segment only), ``api``
runs ``python -m bridge serve`` (gunicorn), and ``worker-1`` and ``worker-2`` each run ``python -m bridge
worker``. They share one storage directory, as hosts share an NFS mount. The test talks to the API
from the ``api`` host, as the Dify plugin daemon would from its own network.

A worker host that loses power cannot be told apart from a slow one by a process check (it is another
host), so its job comes back only through the lease: the workers run with a 6 s lease, renewed every
second, and a 1 s reaper, instead of the production 30 s, 5 s and 10 s. The workers are real workers whose
renders a test can hold at lip-sync (tests/standins/render_gate.py), so "mid-job" never depends on how fast
the machine renders.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from bridge.auth import mint_token
from bridge.keys import KeyStore
from bridge.storage import Storage
from tests.bridge_fixtures import (
    AUD,
    FINAL,
    ISS,
    REPO,
    RW,
    BridgeWorker,
    answers,
    poll_job,
    run_bridge_serve,
    run_bridge_worker,
    started_attempts,
    stop_group,
)
from tests.conftest import ffprobe
from tests.netns import Host, segment
from tests.pg_fixture import PostgresServer, run_postgres
from tests.standins.render_gate import RenderGate

pytestmark = pytest.mark.slow

AVATAR = "astronaut-photo"
API_PORT, REDIS_PORT, POSTGRES_PORT = 8808, 6379, 5432
LEASE = {"BRIDGE_JOB_LEASE_S": "6", "BRIDGE_JOB_HEARTBEAT_S": "1", "BRIDGE_REAPER_INTERVAL_S": "1",
         "BRIDGE_WORKER_HEARTBEAT_S": "1"}
SENTENCE = "This job is held mid-render while the test breaks something."
WORKERS = ("worker-1", "worker-2")


@dataclass
class Cluster:
    hosts: dict[str, Host]
    base: str
    api_key: str
    storage: Storage
    workers: dict[str, BridgeWorker]
    logs: list[Path]
    secrets: list[str]
    """The PostgreSQL and Redis passwords, which no log may show."""
    postgres: PostgresServer
    gate: RenderGate

    @property
    def api(self) -> Host:
        return self.hosts["api"]

    def request(self, method: str, path_or_url: str, sub: str = "tenant-cluster", **kwargs: Any) -> Any:
        """An HTTP call made from the API host (a link is a full URL; a route is a path)."""
        url = path_or_url if path_or_url.startswith("http") else f"{self.base}{path_or_url}"
        headers = {"Authorization": f"Bearer {mint_token(self.api_key, sub, RW, AUD, ISS)}"}
        return self.api.call(requests.request, method, url, headers=headers, timeout=15, **kwargs)

    def submit(self, text: str) -> str:
        response = self.request("POST", "/v1/jobs", json={"text": text, "avatar_id": AVATAR})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait(self, job_id: str, until: frozenset[str] = FINAL, stage: str | None = None) -> dict[str, Any]:
        return poll_job(job_id, lambda: self.request("GET", f"/v1/jobs/{job_id}").json(), until, stage,
                        timeout_s=120, every_s=0.2)

    def starts(self, job_id: str) -> dict[str, list[int]]:
        """Attempt numbers each worker host started for the job, from its log."""
        return {name: started_attempts(worker.log, job_id) for name, worker in self.workers.items()}


def _env(**extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return {**inherited, **LEASE, **extra}


@contextlib.contextmanager
def _redis(host: Host, workdir: Path, password: str) -> Iterator[str]:
    """Redis on the data host's segment address, with a password as off loopback it must have; yields its URL."""
    process = subprocess.Popen(host.command(["redis-server", "--bind", host.ip, "--port", str(REDIS_PORT),
                                             "--requirepass", password, "--save", "", "--appendonly", "no",
                                             "--dir", str(workdir)]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = redis.Redis(host.ip, REDIS_PORT, password=password, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while not host.call(_pings, client):
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://:{password}@{host.ip}:{REDIS_PORT}/0"
    finally:
        stop_group(process)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, storage: Path) -> Iterator[Cluster]:
    shared = tmp_path_factory.mktemp("nfs")  # the storage root every host mounts
    logs = tmp_path_factory.mktemp("cluster-logs")
    with contextlib.ExitStack() as stack:
        hosts = stack.enter_context(segment(["data", "api", *WORKERS]))
        data = hosts["data"]
        redis_password = secrets.token_urlsafe(16)
        redis_url = stack.enter_context(_redis(data, tmp_path_factory.mktemp("redis"), redis_password))
        postgres = stack.enter_context(run_postgres(data.ip, POSTGRES_PORT, prefix=data.command([])))
        database = postgres.create_database("bridge")
        api_key = KeyStore(shared / "keys.json").create()
        gate = RenderGate(tmp_path_factory.mktemp("gate"))
        env = _env(BRIDGE_STORAGE_ROOT=str(shared), BRIDGE_DATABASE_URL=database, BRIDGE_MIN_FREE_BYTES="0",
                   BRIDGE_REDIS_URL=redis_url, ENGINE_STORAGE_ROOT=str(storage))
        api = hosts["api"]
        base = stack.enter_context(run_bridge_serve(env, logs / "api.log", port=API_PORT, host=api.ip,
                                                    prefix=api.command([]), probe=partial(api.call, answers)))
        workers = {name: stack.enter_context(run_bridge_worker({**env, **gate.env}, logs / f"{name}.log", REPO,
                                                               module="tests.standins.render_gate",
                                                               prefix=hosts[name].command([])))
                   for name in WORKERS}
        yield Cluster(hosts, base, api_key, Storage(shared), workers, sorted(logs.glob("*.log")),
                      [postgres.password, redis_password], postgres, gate)


def test_each_host_has_its_own_network(cluster: Cluster) -> None:
    data, worker = cluster.hosts["data"], cluster.hosts["worker-1"]
    assert cluster.api.call(answers, f"{cluster.base}/readyz")  # PostgreSQL, Redis and storage, from the API's host
    assert worker.call(answers, f"{cluster.base}/livez")  # across the segment
    assert not worker.call(answers, f"http://127.0.0.1:{API_PORT}/livez")  # its loopback is its own
    password = cluster.secrets[1]
    assert not cluster.api.call(_pings, redis.Redis("127.0.0.1", REDIS_PORT, password=password,
                                                    socket_connect_timeout=0.5))
    assert cluster.api.call(_pings, redis.Redis(data.ip, REDIS_PORT, password=password, socket_connect_timeout=0.5))


def test_jobs_spread_over_both_hosts_each_written_once_and_links_work(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [cluster.submit(f"Job number {n} says hello from the cluster.") for n in range(4)]
    done = [cluster.wait(job_id) for job_id in jobs]
    assert [d["status"] for d in done] == ["succeeded"] * 4, done
    assert [d["attempts"] for d in done] == [1] * 4
    starts = {job_id: cluster.starts(job_id) for job_id in jobs}
    for job_id, per_host in starts.items():
        assert sorted(len(attempts) for attempts in per_host.values()) == [0, 1], (job_id, per_host)
    assert all(any(per_host[name] for per_host in starts.values()) for name in WORKERS), starts  # both hosts
    for name, worker in cluster.workers.items():  # each host knows itself by its own name, as separate machines do
        owners = set(re.findall(r'"worker": "([^":]+):\d+"', worker.log.read_text(errors="replace")))
        assert owners == {name}, (name, owners)
    for job_id, body in zip(jobs, done, strict=True):
        assert sorted(p.name for p in cluster.storage.outputs_dir(job_id).iterdir()) == ["poster.jpg", "video.mp4"]
        assert not (cluster.storage.job_dir(job_id) / "work").exists()
        link = body["outputs"][0]["video_url"]
        assert link.startswith(f"{cluster.base}/files/"), link
        video = cluster.request("GET", link)
        assert video.status_code == 200 and video.headers["Content-Type"] == "video/mp4"
        assert video.content == cluster.storage.output_path(job_id, "video.mp4").read_bytes()
        (tmp_path / "video.mp4").write_bytes(video.content)
        codecs = sorted(s["codec_name"] for s in ffprobe(tmp_path / "video.mp4")["streams"])
        assert codecs == ["aac", "h264"]


def test_the_job_table_server_restarting_mid_job_loses_nothing(cluster: Cluster) -> None:
    with cluster.gate.armed() as arming:
        job_id = cluster.submit(SENTENCE)
        cluster.wait(job_id, until=frozenset({"running"}), stage="lipsync")  # held there until the gate opens
        arming.disarm()
        cluster.postgres.stop()  # every open session is cut: the API's, the workers' and their lease threads'
        during = cluster.request("GET", f"/v1/jobs/{job_id}")
        assert during.status_code == 503 and during.headers["Content-Type"] == "application/problem+json", \
            during.text
        assert "job table" in during.json()["detail"] and during.headers["Retry-After"]
        arming.open()  # the render goes on while the table is away
        time.sleep(0.5)
        cluster.postgres.start()  # back within the lease: the render rides it out, nobody re-renders
    done = cluster.wait(job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert sum(len(attempts) for attempts in cluster.starts(job_id).values()) == 1
    assert sorted(p.name for p in cluster.storage.outputs_dir(job_id).iterdir()) == ["poster.jpg", "video.mp4"]
    later = cluster.submit("After the restart.")
    assert cluster.wait(later)["status"] == "succeeded"


def test_a_worker_host_losing_power_mid_job_hands_its_job_to_the_other(cluster: Cluster) -> None:
    with cluster.gate.armed() as arming:
        first, second = cluster.submit(SENTENCE), cluster.submit(SENTENCE)
        for job_id in (first, second):  # both held mid-render, so each host has one
            cluster.wait(job_id, until=frozenset({"running"}), stage="lipsync")
        arming.disarm()  # the rerun renders straight through
        owner = next(name for name, attempts in cluster.starts(first).items() if attempts == [1])
        survivor = next(name for name in WORKERS if name != owner)
        assert cluster.starts(second)[survivor] == [1], "both jobs went to one host"
        killed = cluster.hosts[owner].power_off()
        assert cluster.workers[owner].process.pid in killed

    done = {job_id: cluster.wait(job_id) for job_id in (first, second)}
    assert done[second]["status"] == "succeeded" and done[second]["attempts"] == 1, done[second]
    assert done[first]["status"] == "succeeded" and done[first]["attempts"] == 2, done[first]
    assert cluster.starts(first) == {owner: [1], survivor: [2]}
    survivor_log = cluster.workers[survivor].log.read_text(errors="replace")
    assert f"job {first}: worker {owner}:" in survivor_log  # the reaper saw the lease run out, then requeued it
    assert sorted(p.name for p in cluster.storage.outputs_dir(first).iterdir()) == ["poster.jpg", "video.mp4"]
    assert not (cluster.storage.job_dir(first) / "work").exists()  # the dead attempt's scratch is gone
    video = cluster.request("GET", done[first]["outputs"][0]["video_url"])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"


def test_no_log_holds_a_password(cluster: Cluster) -> None:
    for log in cluster.logs:
        text = log.read_text(errors="replace")
        assert text and not [secret for secret in cluster.secrets if secret in text], log.name
