"""Celery transport for render jobs. The job table is the truth; a message only carries a job id.

Settings follow shared/notes/bridge-jobs-security.md §3: late acks plus reject-on-worker-lost, so a
killed worker child gets its job redelivered at once; prefetch 1, so a queued job never waits behind a
long one on a busy worker; a visibility timeout longer than the hard time limit, so Redis never hands a
job that is still running to a second worker. A redelivery is safe because every row change is a
compare-and-set on ``attempts``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.utils.log import get_logger, get_task_logger

from bridge.db import DB_UNAVAILABLE, TERMINAL, Database, Job, utcnow
from bridge.links import object_store
from bridge.logs import get_request_id, log_context
from bridge.metrics import WorkerMetrics, start_worker_metrics_server
from bridge.objectstore import ObjectStore, ObjectStoreError, job_key
from bridge.reaper import crashed_error
from bridge.settings import BridgeSettings
from bridge.storage import Storage, output_mime, output_name
from engine.avatars import check_id
from engine.errors import EngineError, UnknownAvatar
from engine.settings import EngineSettings

if TYPE_CHECKING:  # the render stack loads in workers only, not in the API that publishes jobs
    from engine.render import Engine, RenderResult

RENDER_TASK = "bridge.render_job"
REQUEST_ID = "bridge_request_id"
"""Message header carrying the submitting request's X-Request-ID to the worker's log lines."""
VISIBILITY_MARGIN_S = 300
PROGRESS_INTERVAL_S = 0.5

log = get_task_logger(__name__)
process_log = get_logger(__name__ + ".process")


def make_celery(settings: BridgeSettings, *, publisher: bool = False) -> Celery:
    """The Celery app for both sides: the API publishes ``render_job``, ``python -m bridge worker`` runs it.

    ``publisher=True`` (the API) fails a publish at once when Redis is down, so the client gets a 503
    instead of a request stuck in kombu's connection retries.
    """
    app = Celery("bridge", broker=settings.broker, set_as_current=False)
    limit = settings.job_time_limit_s
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=limit,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        broker_transport_options={
            "visibility_timeout": limit + VISIBILITY_MARGIN_S,
            "socket_connect_timeout": settings.redis_timeout_s,
            **({"max_retries": 0} if publisher else {}),
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_publish_retry=False,
        worker_send_task_events=False,
    )
    if app.conf.broker_transport_options["visibility_timeout"] <= limit:
        raise RuntimeError("the visibility timeout must exceed the job time limit, or jobs run twice")
    runner = JobRunner(settings)

    @app.task(name=RENDER_TASK, ignore_result=True, bind=True)
    def render_job(task: Any, job_id: str) -> None:
        with log_context(request_id=task.request.get(REQUEST_ID)):
            runner.run(job_id)

    worker_process_init.connect(runner.warm_up)  # weak: the receiver lives exactly as long as this app
    return app


def publish(app: Celery, queue: str, job_id: str) -> None:
    """Send one render message; the task id starts with the job id so the reaper can find it in Redis.

    The submitting request's id travels in a header, so the worker's log lines carry it too.
    """
    app.send_task(RENDER_TASK, args=(job_id,), queue=queue, task_id=f"{job_id}.{uuid.uuid4().hex[:12]}",
                  retry=False, headers={REQUEST_ID: get_request_id()})


def process_owner(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def dead_local_owner(owner: str | None) -> str | None:
    """``owner`` when it names a process on this host that no longer exists (a killed prefork child)."""
    if not owner:
        return None
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return owner
    except PermissionError:  # alive, under another user
        return None
    return None


STORAGE_FULL = "storage_full"
STORAGE_FULL_MESSAGE = ("the bridge's storage is full, so the video could not be written; ask the administrator to "
                        "free space, then submit the job again")
UPLOAD_ATTEMPTS = 5


class StorageFull(Exception):
    """The storage root (or the disk under a worker's scratch) ran out of space."""


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain, or ffmpeg saying so (the engine reports encoder failures as text)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class JobAbandoned(Exception):
    """The attempt lost its lease (the job was canceled, or another worker took it over): stop rendering."""


T = TypeVar("T")


def when_db_answers(call: Callable[[], T], patience_s: float) -> T:
    """``call()``, retried with backoff while the job table is unreachable, for up to ``patience_s``.

    Used for the writes that end an attempt: a database restart while a video is being published must
    not cost the render. Past ``patience_s`` the lease has run out anyway and the job is the reaper's.
    """
    deadline, delay = time.monotonic() + patience_s, 0.2
    while True:
        try:
            return call()
        except DB_UNAVAILABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("the job table is unavailable (%s); retrying in %.1f s", type(exc.orig).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def save_progress(db: Database, job_id: str, attempt: int, stage: str, fraction: float) -> None:
    """Progress is advice to pollers: when the job table is unreachable, skip it and keep rendering."""
    try:
        db.update_progress(job_id, attempt, stage, fraction)
    except DB_UNAVAILABLE as exc:
        log.warning("job %s: progress not saved, the job table is unavailable (%s)", job_id, type(exc.orig).__name__)


class LeaseKeeper:
    """Renews the running attempt's lease from a side thread; ``lost`` is set when renewal is refused."""

    def __init__(self, db: Database, job_id: str, attempt: int, owner: str, lease_s: float, every_s: float) -> None:
        self._args = (job_id, attempt, owner, lease_s)
        self._db = db
        self._every_s = every_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bridge-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                if not self._db.heartbeat(*self._args):
                    self.lost.set()
                    return
            except DB_UNAVAILABLE as exc:  # a database restart: try again next beat; the lease has slack for it
                log.warning("lease renewal for job %s missed: the job table is unavailable (%s)", self._args[0],
                            type(exc.orig).__name__)
            except Exception:
                log.warning("lease renewal for job %s failed", self._args[0], exc_info=True)


@dataclass
class JobRunner:
    """Runs one job in a worker child. The engine and DB connections are built once per process."""

    settings: BridgeSettings
    _pid: int = field(default=0, init=False)
    _db: Database | None = field(default=None, init=False)
    _engine: Engine | None = field(default=None, init=False)
    _store: ObjectStore | None = field(default=None, init=False)
    _bucket_ready: bool = field(default=False, init=False)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics, init=False)

    def _resources(self) -> tuple[Database, Engine]:
        """Per process, never inherited across fork (SQLite handles, models and S3 pools must not be shared)."""
        if self._pid != os.getpid() or self._db is None or self._engine is None:
            from engine.render import Engine

            self._pid = os.getpid()
            self._db = Database(self.settings.database)
            self._engine = Engine(EngineSettings())
            self._store = object_store(self.settings)
            self._bucket_ready = False
        return self._db, self._engine

    def _upload(self, job_id: str, name: str, path: Path) -> None:
        """Copy one published output to the bucket (link backend minio); a no-op for local links."""
        if self._store is None:
            return
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                if not self._bucket_ready:
                    self._store.ensure_bucket()
                    self._bucket_ready = True
                self._store.upload(job_key(job_id, name), path, output_mime(name) or "application/octet-stream")
                return
            except ObjectStoreError as err:
                if attempt == UPLOAD_ATTEMPTS:
                    raise
                wait = min(2.0 ** (attempt - 1), 15.0) * random.uniform(0.5, 1.5)  # backoff with jitter
                log.warning("job %s: upload of %s failed (%s); retrying in %.1f s", job_id, name, err, wait)
                time.sleep(wait)

    def warm_up(self, **_: Any) -> None:
        """Load the renderer's models in the child before the first job, not inside it."""
        if self.settings.worker_metrics_port:
            start_worker_metrics_server(self.settings.worker_metrics_port, self.settings.worker_metrics_host,
                                        registry=self.metrics.registry)
        _, engine = self._resources()
        engine.renderer()
        process_log.info("render engine loaded in process %d (renderer %s)", os.getpid(), engine.settings.renderer)

    @property
    def storage(self) -> Storage:
        return Storage(self.settings.storage_root)

    def run(self, job_id: str) -> None:
        """Handle one message: a turn on this queue's workers, not a ticket for the job it names.

        A job of this host whose worker process died (a killed render child, whose message Celery redelivers
        at once) is taken back first, so it keeps its attempt count. Otherwise the worker claims the fairest
        queued job (``Database.claim_next``), which may be another owner's than the one the message names:
        every queued job was published once, so every job still gets its turn.
        """
        db, engine = self._resources()
        owner = process_owner()
        job = db.get_job(job_id)
        if job is None:
            log.warning("job %s is not in the table; its message only gives a turn", job_id)
        elif job.status in TERMINAL:
            log.info("job %s is already %s; its message only gives a turn", job_id, job.status)
        claimed = self._recover(db, job, owner)
        if claimed is None:
            claimed = db.claim_next(self.settings.queue, owner, self.settings.job_lease_s)
        if claimed is None:
            log.info("no queued job left for the message of job %s", job_id)
            return
        with log_context(job_id=claimed.id, attempt=claimed.attempts, sub=claimed.sub, worker=owner):
            self._attempt(db, engine, claimed, claimed.attempts, owner)

    def _recover(self, db: Database, named: Job | None, owner: str) -> Job | None:
        """Claim a running job whose attempt died: the named one (its lease ran out, or its process on this host
        is gone), else any of this queue's jobs held by a dead process of this host. Fails a job that has used up
        its attempts instead. None when there is nothing to recover."""
        settings = self.settings
        candidates = [named] if named is not None and named.status == "running" else []
        candidates += [job for job in db.running(settings.queue) if dead_local_owner(job.lease_owner)]
        for job in candidates:
            dead = dead_local_owner(job.lease_owner)
            if not (dead or _lease_over(job)):
                continue
            if job.attempts >= settings.job_max_attempts:
                if db.finish(job.id, job.attempts, "failed", error=crashed_error(job.attempts)):
                    log.error("job %s failed: its worker stopped %d times", job.id, job.attempts)
                continue
            attempt = db.claim(job.id, job.attempts, owner, settings.job_lease_s, dead_owner=dead)
            if attempt is not None:
                return db.get_job(job.id)
        return None

    def _attempt(self, db: Database, engine: Engine, job: Job, attempt: int, owner: str) -> None:
        job_id, settings = job.id, self.settings
        log.info("job %s attempt %d started", job_id, attempt)
        self.metrics.attempt_started((utcnow() - job.created_at).total_seconds() if attempt == 1 else None)
        work = self.storage.work_dir(job_id, attempt)
        self.storage.drop_stale_work(job_id, attempt)
        status = "failed"
        error: dict[str, str] | None = None  # why this attempt failed, when it did
        try:
            try:
                with LeaseKeeper(db, job_id, attempt, owner, settings.job_lease_s, settings.job_heartbeat_s) as lease:
                    if job.kind == "avatar":
                        outputs, timings, result = [], {}, self._make_avatar(db, engine, job, attempt, lease.lost)
                    else:
                        outputs, timings = self._render(db, engine, job, attempt, work, lease.lost)
                        result = None
            except Exception as exc:
                if _disk_full(exc):
                    raise StorageFull(str(exc)) from exc
                raise
        except StorageFull as err:
            error = {"code": STORAGE_FULL, "message": STORAGE_FULL_MESSAGE}
            log.error("job %s attempt %d failed: the storage is full (%s)", job_id, attempt, str(err)[:300])
        except JobAbandoned:
            status = "abandoned"
            log.info("job %s attempt %d stopped: the job was canceled or taken over", job_id, attempt)
        except SoftTimeLimitExceeded:
            error = {"code": "time_limit", "message": f"the job ran past its {settings.job_time_limit_s} s limit"}
            log.error("job %s attempt %d hit the time limit", job_id, attempt)
        except UnknownAvatar as err:  # deleted after the job was accepted; the engine's own text is for CLI users
            error = {"code": err.code, "message": "the avatar was deleted after the job was accepted, or is not yours; "
                     "GET /v1/avatars lists the ones you can use"}
            log.info("job %s attempt %d failed: %s", job_id, attempt, err.code)
        except EngineError as err:
            error = {"code": err.code, "message": str(err)}
            log.info("job %s attempt %d failed: %s", job_id, attempt, err.code)
        except ObjectStoreError as err:
            error = {"code": "object_store_unavailable", "message": str(err)}
            log.error("job %s attempt %d could not upload its outputs: %s", job_id, attempt, err)
        except DB_UNAVAILABLE as exc:
            status = "abandoned"  # not the job's fault: its lease runs out and the reaper gives it another attempt
            log.error("job %s attempt %d stopped: the job table is unavailable (%s)", job_id, attempt,
                      type(exc.orig).__name__)
        except Exception:
            error = {"code": "internal_error", "message": "the render failed unexpectedly; the error has been logged"}
            log.exception("job %s attempt %d crashed", job_id, attempt)
        else:
            self.metrics.observe_stages(timings)
            finish = partial(db.finish, job_id, attempt, "succeeded", outputs=outputs, timings=timings, result=result,
                             stored_bytes=self.storage.outputs_bytes(job_id))
            if when_db_answers(finish, settings.job_lease_s):
                status = "succeeded"
                log.info("job %s attempt %d succeeded", job_id, attempt, extra={"duration_s": timings.get("total")})
            else:
                status = "abandoned"
                log.warning("job %s attempt %d finished but the job was canceled or taken over", job_id, attempt)
        finally:
            if error is not None:
                finished = when_db_answers(partial(db.finish, job_id, attempt, "failed", error=error),
                                           settings.job_lease_s)
                if finished and error["code"] == STORAGE_FULL:
                    self.storage.drop_outputs(job_id)  # whatever this attempt published is incomplete
                if job.kind == "avatar":
                    db.set_avatar_status(str(job.inputs["avatar_id"]), "failed", error["message"])
            self.metrics.job_finished(status, error["code"] if error else None)
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                work.parent.rmdir()  # only when no other attempt's scratch is left

    def _render(self, db: Database, engine: Engine, job: Job, attempt: int, work: Path,
                lost: threading.Event) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """One speech, then one video per avatar (a batch reuses the speech, as HeyGem's batch mode does)."""
        from engine.render import RenderRequest

        inputs = job.inputs
        avatars = [check_id(str(a)) for a in inputs.get("avatar_ids") or [inputs["avatar_id"]]]  # ids, not paths
        audio = inputs.get("audio")
        work.mkdir(parents=True, exist_ok=True)
        last = 0.0
        last_stage = ""
        done = 0

        def progress(stage: str, fraction: float) -> None:
            """Saved at most every PROGRESS_INTERVAL_S, but always when the stage changes: a poller should be
            able to see every stage a job passes through, however quick."""
            nonlocal last, last_stage
            if lost.is_set():
                raise JobAbandoned(job.id)
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL_S or stage != last_stage:
                last, last_stage = now, stage
                save_progress(db, job.id, attempt, stage, (done + fraction) / len(avatars))

        base = RenderRequest(
            avatar=avatars[0], out=work / "video.mp4", text=None if audio else inputs["text"],
            audio=self.storage.input_path(job.id, audio) if audio else None, lang=inputs.get("lang") or "auto",
            voice=inputs.get("voice"), speed=float(inputs.get("speed", 1.0)),
            resolution=inputs.get("resolution", "source"), subtitles=bool(inputs.get("subtitles", False)),
            renderer=inputs.get("renderer"), tts=inputs.get("tts"),
        )
        progress("tts", 0.0)
        spoken = engine.speak(base)
        outputs: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        for index, avatar_id in enumerate(avatars):
            request = replace(base, avatar=avatar_id, out=work / f"{index}" / "video.mp4", spoken=spoken)
            result = engine.render(request, progress)
            if lost.is_set():
                raise JobAbandoned(job.id)
            outputs.append(self._publish(job.id, index, result))
            for stage, seconds in result.timings.items():
                timings[stage] = round(timings.get(stage, 0.0) + seconds, 3)
            done += 1
        return outputs, timings

    def _make_avatar(self, db: Database, engine: Engine, job: Job, attempt: int,
                     lost: threading.Event) -> dict[str, Any]:
        """Preprocess an uploaded template into the engine's avatar store (face track, mouth crops)."""
        avatar_id = check_id(str(job.inputs["avatar_id"]))
        source = self.storage.input_path(job.id, str(job.inputs["upload"]))

        def progress(stage: str, fraction: float) -> None:
            if lost.is_set():
                raise JobAbandoned(job.id)
            save_progress(db, job.id, attempt, stage, fraction)

        avatar = engine.avatars.add(source, avatar_id=avatar_id, name=str(job.inputs.get("name") or avatar_id),
                                    progress=progress)
        deleted = db.avatar(avatar_id) is None  # by its owner while it was being prepared
        if deleted:
            engine.avatars.delete(avatar.id)
        if deleted or lost.is_set():
            raise JobAbandoned(job.id)
        db.set_avatar_status(avatar_id, "ready", stored_bytes=engine.avatars.disk_bytes(avatar.id))
        return {"id": avatar.id, "name": avatar.name, "kind": avatar.kind, "width": avatar.width,
                "height": avatar.height, "fps": avatar.fps, "duration_s": round(avatar.duration_s, 3),
                "notes": list(avatar.notes)}

    def _publish(self, job_id: str, index: int, result: RenderResult) -> dict[str, Any]:
        storage = self.storage
        video = output_name("video", "mp4", index)
        self._upload(job_id, video, storage.publish(job_id, video, result.video))
        files: dict[str, str | None] = {"poster": None, "subtitles_vtt": None, "subtitles_srt": None}
        for key, stem, ext, source in (("poster", "poster", "jpg", result.poster),
                                       ("subtitles_vtt", "subtitles", "vtt", result.subtitles_vtt),
                                       ("subtitles_srt", "subtitles", "srt", result.subtitles_srt)):
            if source is not None and source.is_file():
                name = files[key] = output_name(stem, ext, index)
                self._upload(job_id, name, storage.publish(job_id, name, source))
        return {"avatar_id": result.avatar_id, "name": video, **files,
                "duration_s": round(result.duration_s, 3), "width": result.width, "height": result.height,
                "size_bytes": storage.output_path(job_id, video).stat().st_size, "mime": output_mime(video),
                "notes": list(result.notes)}


def _lease_over(job: Job) -> bool:
    return job.lease_expires_at is None or job.lease_expires_at < utcnow()
