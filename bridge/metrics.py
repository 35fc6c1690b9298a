"""Prometheus metrics for the bridge: state read at scrape time on the API, event counts in the worker.

The API's gauges come from ``BridgeCollector``, which asks its callables (the job table, Redis, the disk) on
every scrape. The table is the truth, so these numbers are right however many API processes run, and no
multiprocess mode is needed for them. Worker events (stage durations, finished jobs, failures, attempts) live
in ``WorkerMetrics`` in the process that renders, served by ``start_worker_metrics_server``. Liveness of workers
is a Redis key per worker with a TTL (``Heartbeat``), read back by the collector as a heartbeat age.
Names follow Prometheus conventions: base units, ``_seconds``, ``_bytes``, counters ending in ``_total``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY

from bridge.logs import log_context

log = logging.getLogger(__name__)

HEARTBEAT_KEY_PREFIX = "bridge:heartbeat:"
STAGE_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)
"""From a cached avatar lookup (50 ms) to a render at the default 15 min time limit."""
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
FINISHED_STATUSES = ("succeeded", "failed", "canceled")
"""bridge.db.TERMINAL, repeated so workers' counters start at 0 without importing the job table here."""
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
_LABEL_MAX = 64

Reader = Callable[[], Mapping[str, float]]


# --- API side: gauges read at scrape time ---------------------------------------------------------------------


class BridgeCollector:
    """Gauges built from callables, so this module needs neither the job table nor Celery.

    A callable that raises drops only its own family from that scrape (and ``bridge_collect_ok{family}`` is 0);
    it is logged once at WARNING until it works again. A callable left as None is not exported.
    """

    def __init__(
        self,
        queue_depth: Reader | None = None,
        jobs_by_status: Reader | None = None,
        failures_by_reason: Reader | None = None,
        heartbeats: Reader | None = None,
        storage_free_bytes: Callable[[], float] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sources: dict[str, Callable[[], Any] | None] = {
            "queue_depth": queue_depth, "jobs": jobs_by_status, "jobs_failed": failures_by_reason,
            "worker_heartbeat_age": heartbeats, "storage_free": storage_free_bytes,
        }
        self._clock = clock
        self._failing: set[str] = set()

    def describe(self) -> Iterable[Metric]:
        """Names without samples, so registering does not call the callables."""
        return [family for _, family in self._families()] + [self._ok_family()]

    def collect(self) -> Iterable[Metric]:
        ok = self._ok_family()
        for source, family in self._families():
            read = self._sources[source]
            if read is None:
                continue
            try:
                self._fill(source, family, read())
            except Exception as exc:
                if source not in self._failing:
                    self._failing.add(source)
                    log.warning("metrics: cannot read %s (%s: %s); leaving it out of scrapes until it recovers",
                                source, type(exc).__name__, exc)
                ok.add_metric([source], 0)
                continue
            if source in self._failing:
                self._failing.discard(source)
                log.info("metrics: %s can be read again", source)
            ok.add_metric([source], 1)
            yield family
        yield ok

    @staticmethod
    def _families() -> list[tuple[str, GaugeMetricFamily]]:
        return [
            ("queue_depth", GaugeMetricFamily(
                "bridge_queue_depth", "Messages waiting in the broker queue", labels=["queue"])),
            ("jobs", GaugeMetricFamily(
                "bridge_jobs", "Jobs in the job table by status", labels=["status"])),
            ("jobs_failed", GaugeMetricFamily(
                "bridge_jobs_failed", "Failed jobs in the job table by error code", labels=["reason"])),
            ("worker_heartbeat_age", GaugeMetricFamily(
                "bridge_worker_heartbeat_age_seconds", "Seconds since each live worker's last heartbeat",
                labels=["worker"])),
            ("storage_free", GaugeMetricFamily(
                "bridge_storage_free_bytes", "Free bytes on the storage root's file system")),
        ]

    @staticmethod
    def _ok_family() -> GaugeMetricFamily:
        return GaugeMetricFamily("bridge_collect_ok", "1 when the last scrape could read this family, else 0",
                                 labels=["family"])

    def _fill(self, source: str, family: GaugeMetricFamily, value: Any) -> None:
        if source == "storage_free":
            family.add_metric([], float(value))
            return
        now = self._clock() if source == "worker_heartbeat_age" else 0.0
        for label, number in dict(value).items():
            sample = max(0.0, now - float(number)) if source == "worker_heartbeat_age" else float(number)
            family.add_metric([str(label)], sample)


def make_registry(*collectors: Any, process_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry (never the global one, so building two apps in one process is fine)."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    if process_metrics:
        ProcessCollector(registry=registry)
    return registry


def metrics_response(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """Body and Content-Type for ``GET /metrics``; OpenMetrics when the scraper's Accept asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def redis_queue_depth(client: redis.Redis, queues: Iterable[str]) -> Callable[[], dict[str, int]]:
    """Reader for ``queue_depth``: kombu keeps a Redis queue as one list per priority step."""
    names = list(queues)

    def read() -> dict[str, int]:
        pipe = client.pipeline(transaction=False)
        for queue in names:
            for step in KOMBU_PRIORITY_STEPS:
                pipe.llen(f"{queue}{KOMBU_PRIORITY_SEP}{step}" if step else queue)
        lengths = iter(pipe.execute())
        return {queue: sum(int(next(lengths)) for _ in KOMBU_PRIORITY_STEPS) for queue in names}

    return read


def disk_free(path: str | os.PathLike[str]) -> Callable[[], int]:
    """Reader for ``storage_free_bytes``."""
    root = Path(path)
    return lambda: shutil.disk_usage(root).free


# --- worker side: events -------------------------------------------------------------------------------------


def _label(value: str) -> str:
    return str(value)[:_LABEL_MAX] or "unknown"


class WorkerMetrics:
    """Counters and histograms a render worker updates. Its own registry unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stage_duration = Histogram(
            "bridge_stage_duration_seconds", "Time spent in one render stage (tts, avatar, lipsync, encode…)",
            ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram(
            "bridge_job_queue_wait_seconds", "From submit to a job's first attempt starting",
            buckets=QUEUE_WAIT_BUCKETS, registry=self.registry)
        self.jobs_finished = Counter(
            "bridge_jobs_finished", "Jobs this worker moved to a terminal status", ["status"], registry=self.registry)
        self.job_failures = Counter(
            "bridge_job_failures", "Failed jobs by error code", ["reason"], registry=self.registry)
        self.job_attempts = Counter(
            "bridge_job_attempts", "Attempts started; more than jobs finished means redeliveries",
            registry=self.registry)
        for status in FINISHED_STATUSES:
            self.jobs_finished.labels(status)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_duration.labels(_label(stage)).observe(max(0.0, seconds))

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        """An engine ``RenderResult.timings``; its ``total`` is the sum of the rest, so it is skipped."""
        for stage, seconds in timings.items():
            if stage != "total":
                self.observe_stage(stage, seconds)

    def attempt_started(self, queue_wait_s: float | None = None) -> None:
        """Count an attempt; pass the queue wait on a job's first attempt only (a retry's includes the crash)."""
        self.job_attempts.inc()
        if queue_wait_s is not None:
            self.queue_wait.observe(max(0.0, queue_wait_s))

    def job_finished(self, status: str, reason: str | None = None) -> None:
        self.jobs_finished.labels(_label(status)).inc()
        if status == "failed":
            self.job_failures.labels(_label(reason or "unknown")).inc()


@contextlib.contextmanager
def stage_timer(metrics: WorkerMetrics | None, stage: str) -> Iterator[None]:
    """Time a block as ``stage`` (also when it raises) and bind ``stage`` to the log context meanwhile."""
    started = time.perf_counter()
    try:
        with log_context(stage=stage):
            yield
    finally:
        if metrics is not None:
            metrics.observe_stage(stage, time.perf_counter() - started)


def start_worker_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None,
) -> WSGIServer | None:
    """Serve ``/metrics`` on a daemon thread; returns the server (``.shutdown()``), or None when off or failed.

    ``port`` 0 means off. Without a registry: every process's metrics when ``PROMETHEUS_MULTIPROC_DIR`` is set
    (prefork with several children), else the global registry. A port in use is logged, not raised, so a
    replacement worker child never dies over its metrics.
    """
    if port <= 0:
        return None
    if registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = REGISTRY
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("metrics: cannot listen on %s:%d (%s); this worker exports no metrics", addr, port, exc)
        return None
    log.info("metrics: serving on http://%s:%d/metrics", addr, port)
    return server


# --- worker heartbeats in Redis ------------------------------------------------------------------------------


def _key_name(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def beat(client: redis.Redis, worker_name: str, ttl_s: float) -> float:
    """Write ``bridge:heartbeat:<worker>`` = now (epoch seconds), expiring after ``ttl_s``; returns now."""
    if not worker_name:
        raise ValueError("a heartbeat needs a worker name")
    now = time.time()
    client.set(HEARTBEAT_KEY_PREFIX + worker_name, f"{now:.3f}", px=max(1, round(ttl_s * 1000)))
    return now


def read_heartbeats(client: redis.Redis) -> dict[str, float]:
    """Worker name → last beat (epoch seconds) for every unexpired key. SCAN, so Redis is never blocked."""
    keys = list(client.scan_iter(match=HEARTBEAT_KEY_PREFIX + "*", count=500))
    if not keys:
        return {}
    beats: dict[str, float] = {}
    for key, value in zip(keys, client.mget(keys), strict=True):
        if value is None:  # expired between SCAN and MGET
            continue
        with contextlib.suppress(ValueError):
            beats[_key_name(key)[len(HEARTBEAT_KEY_PREFIX):]] = float(value)
    return beats


class Heartbeat:
    """Calls ``beat`` every ``interval_s`` on a daemon thread. Redis errors are logged once per outage.

    The TTL (default 6 intervals) bounds how long a dead worker still shows up, with a growing age; alert on
    an age above 2-3 intervals. ``stop`` deletes the key, so a worker shut down on purpose is not reported.
    Give it a client with short socket timeouts: redis-py's default retries stretch one failed beat to seconds.
    """

    def __init__(self, client: redis.Redis, worker_name: str, interval_s: float = 10.0,
                 ttl_s: float | None = None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.client = client
        self.worker_name = worker_name
        self.interval_s = interval_s
        self.ttl_s = ttl_s if ttl_s is not None else 6 * interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> Heartbeat:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.worker_name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0, *, forget: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if forget and not self._failing:  # with Redis down, do not stall shutdown on its retries
            with contextlib.suppress(Exception):
                self.client.delete(HEARTBEAT_KEY_PREFIX + self.worker_name)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            self.beat_once()
            if self._stop.wait(self.interval_s):
                return

    def beat_once(self) -> bool:
        """One beat; False (never an exception) when Redis could not take it."""
        try:
            beat(self.client, self.worker_name, self.ttl_s)
        except Exception as exc:
            if not self._failing:
                self._failing = True
                log.warning("heartbeat for %s failed (%s: %s); retrying every %.0f s",
                            self.worker_name, type(exc).__name__, exc, self.interval_s)
            return False
        if self._failing:
            self._failing = False
            log.info("heartbeat for %s is back", self.worker_name)
        return True
