"""`make bench`, bridge part: what the bridge adds on top of the engine, as ratios measured in one run.

1. API overhead with 50 concurrent submitters: the POST /v1/jobs round trip (p50/p99), against 50
   GET /livez round trips sent at the same time; and the dispatch overhead (p50/p99): from the moment
   a job was submitted *and* a worker was free until that worker claimed it (publish → Redis →
   worker → compare-and-set), so time spent queued behind other renders is not counted.
2. End-to-end latency of a ~3-second sentence on an idle stack: POST → poll → first byte of the
   video through its link, against the same render done directly by the engine in one process.
3. Fairness between tenants: key A queues 40 jobs; key B submits one while A's first renders run. B's wait
   from submit to start, in renders started meanwhile and in multiples of one render, against the FIFO wait
   (everything A had queued ahead).
4. A soak (SOAK_S seconds, default 600): RSS and open descriptors of the API and the workers.

BENCH_PHASES (comma-separated, default ``overhead,fairness,latency,soak``) runs a subset. The overhead phase runs
once per job table in BENCH_DATABASES (default ``sqlite,postgresql``: one host's default, and what
several hosts share); the others on the first only.

The stack is the production one on loopback: redis-server, `python -m bridge serve` (gunicorn
gthread, 2 processes × 8 threads) and two `python -m bridge worker` processes (one per core here).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bridge.auth import SCOPES, mint_token  # noqa: E402
from bridge.db import Database  # noqa: E402
from bridge.keys import KeyStore  # noqa: E402
from bridge.settings import BridgeSettings  # noqa: E402
from engine import Engine, EngineSettings, RenderRequest  # noqa: E402
from engine.samples import PHOTO_ID, ensure_samples  # noqa: E402
from tests.bridge_fixtures import (  # noqa: E402
    free_port,
    run_bridge_serve,
    run_bridge_worker,
    run_redis_server,
    worker_env,
)
from tests.pg_fixture import run_postgres  # noqa: E402

SUBMITTERS = 50
SOAK_TIME_LIMIT_S = 120
"""Job time limit of the bench's workers (see ``soak``); every render here takes a second or two."""
JOBS = 50
SENTENCE = "Your order shipped today and arrives on Friday."  # about 3 s of speech
AUD, ISS = BridgeSettings.model_fields["jwt_audience"].default, BridgeSettings.model_fields["jwt_issuer"].default


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    phases = os.environ.get("BENCH_PHASES", "overhead,fairness,latency,soak").split(",")
    databases = os.environ.get("BENCH_DATABASES", "sqlite,postgresql").split(",")
    engine_root = Path(os.environ.get("ENGINE_STORAGE_ROOT", REPO / "var"))
    ensure_samples(EngineSettings(storage_root=engine_root))
    for index, database in enumerate(databases):
        with _stack(engine_root, database) as (base, key, settings, workers):
            print(f"== job table: {database}")
            if "overhead" in phases:
                overhead(base, key, settings)
            if index > 0:  # the rest measure rendering and memory, not the table
                continue
            if "fairness" in phases:
                fairness(base, key, settings)
            if "latency" in phases:
                latency(base, key, engine_root)
            if "soak" in phases:
                soak(base, key, workers)


@contextlib.contextmanager
def _stack(engine_root: Path, database: str) -> Iterator[tuple[str, str, BridgeSettings, list[int]]]:
    """redis-server, `bridge serve` and two workers over a SQLite file or a PostgreSQL server."""
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        port = free_port()
        redis_server = stack.enter_context(run_redis_server(root))
        url = None
        if database == "postgresql":
            url = stack.enter_context(run_postgres()).create_database("bench")
        settings = BridgeSettings(_env_file=None, storage_root=root / "bridge", redis_url=redis_server.url,
                                  min_free_bytes=0, port=port, database_url=url,
                                  job_time_limit_s=SOAK_TIME_LIMIT_S)  # type: ignore[call-arg]
        settings.storage_root.mkdir()
        key = KeyStore(settings.keys_path).create()
        env = worker_env(settings, engine_root, BRIDGE_PORT=str(port), BRIDGE_JOB_TIME_LIMIT_S=str(SOAK_TIME_LIMIT_S))
        base = stack.enter_context(run_bridge_serve(env, root / "serve.log", port=port))
        workers = [stack.enter_context(run_bridge_worker(env, root / f"w{n}.log", REPO)) for n in (1, 2)]
        yield base, key, settings, [w.process.pid for w in workers]

def _token(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(key, 'bench', sorted(SCOPES), AUD, ISS)}"}


def _wait(base: str, key: str, job_id: str) -> dict:
    while True:
        job = requests.get(f"{base}/v1/jobs/{job_id}", headers=_token(key), timeout=30).json()
        if job["status"] in {"succeeded", "failed", "canceled"}:
            return dict(job)
        time.sleep(0.05)


def overhead(base: str, key: str, settings: BridgeSettings) -> None:
    def submit(n: int) -> tuple[float, str]:
        started = time.perf_counter()
        response = requests.post(f"{base}/v1/jobs", json={"text": f"Number {n}.", "avatar_id": PHOTO_ID},
                                 headers=_token(key), timeout=60)
        response.raise_for_status()
        return time.perf_counter() - started, response.json()["id"]

    def livez(_: int) -> float:
        started = time.perf_counter()
        requests.get(f"{base}/livez", timeout=60).raise_for_status()
        return time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(2 * SUBMITTERS) as pool:  # probes share the submitters' load
        began = time.perf_counter()
        probe_futures = [pool.submit(livez, n) for n in range(JOBS)]
        submitted = list(pool.map(submit, range(JOBS)))
        wall = time.perf_counter() - began
        probes = [future.result() for future in probe_futures]
    jobs = [_wait(base, key, job_id) for _, job_id in submitted]
    assert all(job["status"] == "succeeded" for job in jobs), [j for j in jobs if j["status"] != "succeeded"]
    db = Database(settings.database)
    rows = sorted((db.get_job(job["id"]) for job in jobs), key=lambda r: r.started_at)  # type: ignore[union-attr]
    dispatch = []
    free_at: list[float] = []  # when each worker became free, oldest first (two workers)
    for row in rows:
        created, started = row.created_at.timestamp(), row.started_at.timestamp()  # type: ignore[union-attr]
        free = free_at.pop(0) if len(free_at) >= 2 else 0.0
        dispatch.append(started - max(created, free))
        free_at.append(row.finished_at.timestamp())  # type: ignore[union-attr]
        free_at.sort()
    post = [seconds for seconds, _ in submitted]
    render = statistics.median(r.timings["total"] for r in rows if r.timings)  # type: ignore[union-attr]
    print(f"API overhead, {SUBMITTERS} concurrent submitters, {JOBS} jobs, 2 workers:")
    print(f"  POST /v1/jobs round trip   p50 {pct(post, 50) * 1000:7.1f} ms   p99 {pct(post, 99) * 1000:7.1f} ms")
    print(f"  GET /livez round trip      p50 {pct(probes, 50) * 1000:7.1f} ms   p99 {pct(probes, 99) * 1000:7.1f} ms")
    print(f"  submit / livez (p50)       {pct(post, 50) / pct(probes, 50):7.2f}x   "
          f"({JOBS / wall:.0f} submits/s while 2 renders share the 2 cores)")
    print(f"  dispatch (ready → claimed) p50 {pct(dispatch, 50) * 1000:7.1f} ms   "
          f"p99 {pct(dispatch, 99) * 1000:7.1f} ms")
    print(f"  dispatch p50 / render p50  {pct(dispatch, 50) / render:7.3f}  (render p50 {render:.2f} s)")
    end_to_end = [(r.finished_at - r.created_at).total_seconds() for r in rows]  # type: ignore[operator]
    span = (max(r.finished_at for r in rows) - min(r.created_at for r in rows)).total_seconds()  # type: ignore[type-var]
    print(f"  end to end (submit → done)  p50 {pct(end_to_end, 50):6.2f} s   p99 {pct(end_to_end, 99):6.2f} s   "
          f"{len(rows) / span * 60:.0f} jobs/minute")
    duplicated = sum(1 for r in rows if r.attempts != 1 or len(r.outputs) != 1)
    print(f"  lost {JOBS - len(rows)}, failed {sum(1 for j in jobs if j['status'] != 'succeeded')}, "
          f"run more than once {duplicated}")


BACKLOG = 40


def fairness(base: str, key: str, settings: BridgeSettings) -> None:
    """Tenant A's backlog against tenant B's single job: B should start after at most one more render."""
    other = KeyStore(settings.keys_path).create()

    def submit(api_key: str, text: str) -> str:
        response = requests.post(f"{base}/v1/jobs", json={"text": text, "avatar_id": PHOTO_ID},
                                 headers=_token(api_key), timeout=60)
        response.raise_for_status()
        return str(response.json()["id"])

    backlog = [submit(key, f"Backlog sentence number {n}.") for n in range(BACKLOG)]
    while requests.get(f"{base}/v1/jobs/{backlog[1]}", headers=_token(key), timeout=30).json()["status"] == "queued":
        time.sleep(0.02)  # both workers busy with A's jobs
    late = submit(other, SENTENCE)
    jobs = [_wait(base, key, job_id) for job_id in backlog] + [_wait(base, other, late)]
    assert all(job["status"] == "succeeded" for job in jobs), [j for j in jobs if j["status"] != "succeeded"]
    db = Database(settings.database)
    rows = {job["id"]: db.get_job(job["id"]) for job in jobs}
    b = rows[late]
    a = [rows[job_id] for job_id in backlog]
    ahead = sum(1 for r in a if r.started_at > b.created_at)  # A jobs a FIFO queue would have run first
    overtaken = sum(1 for r in a if b.created_at < r.started_at < b.started_at)
    render = statistics.median(r.timings["total"] for r in a if r.timings)
    waited = (b.started_at - b.created_at).total_seconds()
    print(f"Fairness, key A queues {BACKLOG} jobs, key B submits 1 while A's first two render (2 workers):")
    print(f"  B's job started after {overtaken} more render(s) started; a FIFO queue would have run {ahead} first")
    print(f"  B waited {waited:6.2f} s from submit to start = {waited / render:5.2f}x one render "
          f"(render p50 {render:.2f} s); FIFO estimate {ahead * render / 2:6.1f} s")
    db.dispose()


def latency(base: str, key: str, engine_root: Path) -> None:
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        response = requests.post(f"{base}/v1/jobs", json={"text": SENTENCE, "avatar_id": PHOTO_ID, "lang": "en"},
                                 headers=_token(key), timeout=60)
        job = _wait(base, key, response.json()["id"])
        with requests.get(job["outputs"][0]["video_url"], stream=True, timeout=60) as video:
            video.raise_for_status()
            next(video.iter_content(1))
        runs.append((time.perf_counter() - started, job["outputs"][0]["duration_s"]))
    end_to_end, duration = sorted(runs)[1]
    engine = Engine(EngineSettings(storage_root=engine_root))
    with tempfile.TemporaryDirectory() as tmp:
        engine.render(RenderRequest(avatar=PHOTO_ID, out=Path(tmp) / "warm.mp4", text="Warm up."))
        direct = sorted(engine.render(RenderRequest(avatar=PHOTO_ID, out=Path(tmp) / f"{i}.mp4", text=SENTENCE,
                                                    lang="en")).timings["total"] for i in range(3))[1]
    print(f"End to end, one ~3 s sentence ({duration:.2f} s of video, {PHOTO_ID}), idle stack, median of 3:")
    print(f"  submit → first byte of the link   {end_to_end:6.2f} s  ({end_to_end / duration:.2f}x real time)")
    print(f"  the same render, engine in-process {direct:6.2f} s")
    print(f"  bridge end to end / direct render  {end_to_end / direct:6.2f}x")


def _usage(pids: list[int], children: bool) -> tuple[float, int]:
    """Resident MiB and open file descriptors of these processes, or of their children (looked up each time:
    gunicorn replaces its workers after about a thousand requests)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            procs += parent.children(recursive=True) if children else [parent]
    rss = fds = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            rss += proc.memory_info().rss
            fds += proc.num_fds()
    return rss / 2**20, fds


def soak(base: str, key: str, worker_pids: list[int]) -> None:
    """Steady load for SOAK_S seconds (default 600): memory and descriptors sampled ten times after warm-up.

    A leak grows at a steady rate; allocator arenas and caches filling up grow early and stop. So the
    figure that tells them apart is the growth over the second half of the soak, next to the first half's.
    Each worker's main process keeps a little per job for one time-limit window (the pool's time-limit
    timers, which Celery cancels but only drops when they fall due; and up to 1000 finished task ids), so
    the bench's stack runs with a 120 s limit (renders take about a second) to show that plateau inside
    the soak; with the default 900 s it comes after 15 minutes.
    """
    duration = float(os.environ.get("SOAK_S", "600"))
    serve = [p.pid for p in psutil.Process().children() if p.cmdline()[-2:] == ["bridge", "serve"]]
    groups = {"API": (serve, False), "API (gunicorn workers)": (serve, True),
              "workers (main)": (worker_pids, False), "workers (render)": (worker_pids, True)}
    period = 1.5  # one short job every 1.5 s: steady, below what two workers can take
    submitted: list[str] = []
    samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
    started = time.monotonic()
    warm_at: float | None = None
    while time.monotonic() - started < duration:
        response = requests.post(f"{base}/v1/jobs", json={"text": "Steady.", "avatar_id": PHOTO_ID},
                                 headers=_token(key), timeout=60)
        response.raise_for_status()
        submitted.append(response.json()["id"])
        now = time.monotonic()
        if len(submitted) == 20:  # warmed up: caches filled, pools opened
            warm_at = now
        if warm_at is not None and now - warm_at >= len(samples) * (duration - (warm_at - started)) / 10:
            samples.append((now - started, {name: _usage(*group) for name, group in groups.items()}))
        time.sleep(period)
    jobs = [_wait(base, key, job_id) for job_id in submitted]
    samples.append((time.monotonic() - started, {name: _usage(*group) for name, group in groups.items()}))
    print(f"Soak, {duration / 60:.0f} min, one job every {period} s ({len(jobs)} jobs, "
          f"{sum(1 for j in jobs if j['status'] == 'succeeded')} succeeded); sampled at "
          + " ".join(f"{at / 60:.1f}" for at, _ in samples) + " min:")
    for name in groups:
        rss = [usage[name][0] for _, usage in samples]
        fds = [usage[name][1] for _, usage in samples]
        mid = len(rss) // 2
        print(f"  {name}")
        print("    RSS MiB  " + " ".join(f"{r:.1f}" for r in rss))
        print("    open fds " + " ".join(str(f) for f in fds))
        print(f"    RSS {rss[0]:.1f} → {rss[-1]:.1f} MiB ({rss[-1] / rss[0]:.3f}x); first half "
              f"{rss[mid] - rss[0]:+.1f} MiB, second half {rss[-1] - rss[mid]:+.1f} MiB "
              f"({rss[-1] / rss[mid]:.3f}x)")


if __name__ == "__main__":
    main()
