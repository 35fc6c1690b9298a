"""The reaper: makes sure every queued job has a message and every running job a live worker.

Celery alone loses track of a job when a whole worker host dies (its message waits in Redis's unacked
set until the visibility timeout, about the job time limit) or when Redis forgets a message (restarted
without persistence). The job table knows better, so each worker runs a reaper thread that, every
``reaper_interval_s``:

1. gives a running job whose lease expired back to the queue, or fails it as
   ``worker_crashed_repeatedly`` once it used up ``job_max_attempts``;
2. publishes every queued job that was never published (a submit during a Redis outage, a requeue from
   step 1), and makes up for messages the broker lost: a message is a turn on the queue's workers, so
   there must be at least as many waiting (or delivered and not yet rendering) as there are queued jobs.

Every change is a compare-and-set, so any number of reapers can run at once; a duplicate message is
harmless because a worker only claims a job that is queued or whose lease ran out, and drops a message
that finds nothing to claim.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis

from bridge.db import DB_UNAVAILABLE, Database, Job, utcnow

log = logging.getLogger(__name__)

CRASHED = "worker_crashed_repeatedly"
UNACKED_KEY = "unacked"
PRIORITY_SEPARATOR = "\x06\x16"


def crashed_error(attempts: int) -> dict[str, str]:
    return {"code": CRASHED,
            "message": f"the job stopped its worker {attempts} times (crash, kill or lost host) and was not retried"}


def job_id_of(task_id: str) -> str:
    """Task ids are ``<job id>.<suffix>`` so the reaper can tell which jobs the broker holds."""
    return task_id.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class BrokerMessages:
    """The job ids named by ``queue``'s messages in the broker: waiting in its lists, or delivered to a worker
    and not yet acknowledged (a render in progress, or one about to be claimed)."""

    waiting: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)


def broker_messages(client: redis.Redis, queue: str) -> BrokerMessages:
    """What Redis holds for ``queue``: its lists (any priority) and its entries in the shared unacked hash."""
    waiting: list[bytes] = []
    for key in client.scan_iter(match=f"{queue}*", count=100):
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        if name == queue or name.startswith(queue + PRIORITY_SEPARATOR):
            waiting.extend(client.lrange(key, 0, -1))
    delivered = [raw for raw in client.hvals(UNACKED_KEY) if _routed_to(raw, queue)]
    return BrokerMessages([job for job in map(_job_id, waiting) if job],
                          [job for job in map(_job_id, delivered) if job])


def _routed_to(raw: bytes, queue: str) -> bool:
    """Unacked entries are ``[message, exchange, routing key]``; Celery routes a queue's messages by its name."""
    try:
        entry = json.loads(raw)
        return isinstance(entry, list) and len(entry) > 2 and entry[2] == queue
    except ValueError:
        return False


def _job_id(raw: bytes) -> str | None:
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        return job_id_of(str(message["headers"]["id"]))
    except (ValueError, KeyError, TypeError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)


class Reaper:
    def __init__(
        self, db: Database, queue: str, publish: Callable[[str], None], max_attempts: int,
        in_broker: Callable[[], BrokerMessages], grace_s: float = 10.0,
    ) -> None:
        """Looks after the jobs of ``queue`` only (their messages are in that queue's Redis lists).

        ``grace_s``: a job published less than this long ago may still be on its way through the broker.
        """
        self.db = db
        self.queue = queue
        self.grace_s = grace_s
        self.publish = publish
        self.max_attempts = max_attempts
        self.in_broker = in_broker

    def sweep(self) -> SweepReport:
        report = SweepReport()
        for job in self.db.expired_leases(self.queue):
            if job.attempts >= self.max_attempts:
                if self.db.finish(job.id, job.attempts, "failed", error=crashed_error(job.attempts)):
                    report.dead_lettered.append(job.id)
                    log.error("job %s failed: its worker stopped %d times", job.id, job.attempts)
            elif self.db.requeue(job.id, job.attempts):
                report.requeued.append(job.id)
                log.warning("job %s: worker %s stopped beating; requeued after attempt %d",
                            job.id, job.lease_owner, job.attempts)
        queued = self.db.queued(self.queue)
        settled = utcnow() - timedelta(seconds=self.grace_s)
        for job in queued:
            if job.dispatched_at is None and (job.stage == "requeued" or job.created_at < settled) \
                    and self.db.claim_undispatched(job.id):
                self.publish(job.id)
                report.published.append(job.id)
        self._replace_lost_turns(queued, settled, report)
        return report

    def _replace_lost_turns(self, queued: list[Job], settled: datetime, report: SweepReport) -> None:
        """Publish again for queued jobs whose turns the broker lost (Redis restarted without its data).

        A message is a turn, not a ticket (``JobRunner.run``), so what must hold is a count: there are at least as
        many messages waiting, or delivered to a worker that is not rendering yet, as there are published queued
        jobs. A shortfall is made up from the oldest jobs no message names. A surplus is harmless: a worker that
        finds nothing queued drops its message.
        """
        waiting = [job for job in queued if job.dispatched_at is not None and job.dispatched_at < settled]
        if not waiting:
            return
        messages = self.in_broker()
        running = len(self.db.running(self.queue))
        fresh = sum(1 for job in queued if job.dispatched_at is not None and job.dispatched_at >= settled)
        turns = len(messages.waiting) + max(0, len(messages.delivered) - running) - fresh
        missing = len(waiting) - max(0, turns)
        if missing <= 0:
            return
        named = set(messages.waiting) | set(messages.delivered)
        for job in sorted(waiting, key=lambda j: (j.id in named, j.created_at))[:missing]:
            if self.db.mark_dispatched(job.id, previous=job.dispatched_at):
                log.warning("job %s was queued but the broker had no message for it; publishing again", job.id)
                self.publish(job.id)
                report.published.append(job.id)


class ReaperThread:
    """Runs each sweep (reaper, callbacks, retention) every ``interval_s`` in a daemon thread.

    A failing sweep is logged and tried again next round; it never stops the others.
    """

    def __init__(self, sweeps: Iterable[Callable[[], object]], interval_s: float) -> None:
        self.sweeps = list(sweeps)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bridge-reaper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for sweep in self.sweeps:
                name = getattr(sweep, "__qualname__", sweep)
                try:
                    sweep()
                except DB_UNAVAILABLE as exc:  # expected during a database restart: one line, no traceback
                    log.warning("maintenance sweep %s skipped: the job table is unavailable (%s); retrying in %.0f s",
                                name, type(exc.orig).__name__, self.interval_s)
                except Exception:
                    log.exception("maintenance sweep %s failed; retrying in %.0f s", name, self.interval_s)
            self._stop.wait(self.interval_s)
