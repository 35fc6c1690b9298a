"""The job table: the source of truth for every job. Celery only carries job ids.

Every state change a worker makes is a compare-and-set on ``attempts``, so a redelivered task
(a worker that died, a visibility timeout that ran out) can never overwrite a newer attempt.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    case,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
STATUSES: tuple[Status, ...] = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
ACTIVE: tuple[str, ...] = ("queued", "running")
DEFAULT_QUEUE = "render"
DB_UNAVAILABLE = (OperationalError, InterfaceError)
"""What SQLAlchemy raises when the database cannot be reached or cut the connection (a restart, a failover,
SQLite's lock held too long): a reason to wait and retry, never to blame the job."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite drops the offset, so store naive UTC and re-attach it)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("sub", "idempotency_key", name="uq_jobs_sub_idempotency_key"),
        Index("ix_jobs_owner", "kid", "sub", "created_at"),
        Index("ix_jobs_kid_started", "kid", "started_at"),
        Index("ix_jobs_status_queue", "status", "queue"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sub: Mapped[str] = mapped_column(String(255), index=True)
    kid: Mapped[str | None] = mapped_column(String(16), default=None)
    """The API key that submitted the job. The owner is (kid, sub): any key holder can mint any ``sub``."""
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    """``scoped_idempotency_key(kid, key)``: with ``sub`` in the unique constraint, a key is scoped to its owner."""
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    """Set once the broker took the message; None means it still has to be (re-)published."""
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    """``host:pid`` of the worker process running the current attempt."""
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None, index=True)
    """The running attempt's heartbeat deadline; past it, the reaper gives the job to another worker."""
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON, default=None)
    """Seconds per engine stage of the successful attempt."""
    queue: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    """The Celery queue the job was sent to; each queue's workers look after only their own jobs."""
    kind: Mapped[str | None] = mapped_column(String(16), default="render")
    """``render`` (text or audio to video) or ``avatar`` (preprocess an uploaded template)."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """What an avatar job made: the avatar's description."""
    callback_url: Mapped[str | None] = mapped_column(Text, default=None)
    callback_status: Mapped[str | None] = mapped_column(String(16), default=None, index=True)
    """None (no callback), ``pending``, ``delivered`` or ``failed``."""
    callback_attempts: Mapped[int | None] = mapped_column(Integer, default=0)
    callback_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    """When retention deleted the job's files."""
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=0)
    """Bytes the job keeps in storage (its input, then its outputs) until retention: the key's storage quota."""


class AvatarRow(Base):
    """Who owns an avatar made through the API. Avatars without a row (samples, CLI-made) are shared.

    An avatar belongs to the API key (``kid``), not to the ``sub`` that made it: a Dify workspace holds one
    key, and an avatar made there serves every app and end user of the workspace. ``sub`` records who made it.
    """

    __tablename__ = "avatars"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sub: Mapped[str] = mapped_column(String(255), index=True)
    kid: Mapped[str | None] = mapped_column(String(16), default=None, index=True)
    """The owning API key; rows from before keys owned avatars have none and only admin keys see them."""
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=0)
    """Size of the preprocessed avatar in the engine's store, once ready (the key's storage quota)."""
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="processing")
    """``processing``, ``ready`` or ``failed``."""
    job_id: Mapped[str] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    next_after: tuple[datetime, str] | None
    """(created_at, id) of the last job when more may follow; the API turns it into an opaque cursor."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a job belongs to: the API key and the ``sub`` its token named. Neither alone identifies a caller."""

    kid: str | None
    sub: str


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-key limits checked in the same transaction as the insert (0: no limit)."""

    active_jobs: int = 0
    """Queued plus running jobs."""
    avatars: int = 0
    """Avatars that are processing or ready."""
    stored_bytes: int = 0
    """Inputs and outputs of jobs not yet purged, plus preprocessed avatars."""


class QuotaExceeded(Exception):
    """An insert would take a key past one of its limits; nothing was written. ``used``: before the insert."""

    def __init__(self, what: str, limit: int, used: int) -> None:
        super().__init__(f"{what}: {used} of {limit}")
        self.what, self.limit, self.used = what, limit, used


def scoped_idempotency_key(kid: str | None, key: str) -> str:
    """What the table stores for a client's Idempotency-Key: bound to the API key, fixed length.

    The unique constraint is on (sub, this), so the same key under two API keys (or two subs) makes two jobs.
    """
    return hashlib.sha256(f"{kid or ''}\0{key}".encode()).hexdigest()


class IdempotencyConflict(Exception):
    """The same Idempotency-Key was used by this sub with a different request body."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"idempotency key already used for job {job.id} with a different request")
        self.job = job


def new_job_id() -> str:
    return uuid.uuid4().hex


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the API read while a worker writes; busy_timeout waits out the other writer instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """One SQLAlchemy engine plus the few queries the bridge needs. Build one per process (not across fork)."""

    def __init__(self, url: str) -> None:
        self.url = url
        server = not url.startswith("sqlite")
        # pre_ping: connections a database restart cut are replaced on checkout instead of failing a request
        # hide_parameters: an error's text (logged with its traceback) never carries user strings such as URLs
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=server, hide_parameters=True)
        if not server:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def create_all(self) -> None:
        """Create missing tables, and add nullable columns a newer bridge introduced to an existing table.

        Safe when several processes start at once: losing the race to create a table is not an error.
        """
        for step in (Base.metadata.create_all, self._upgrade):
            try:
                step(self.engine)
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if "already exists" not in str(exc) and "duplicate" not in str(exc).lower():
                    raise
                step(self.engine)  # another process made some of it first; make the rest

    @staticmethod
    def _upgrade(engine: Engine) -> None:
        """Columns and indexes a newer bridge added to tables an older one created, and their backfills."""
        added: set[str] = set()
        with engine.begin() as connection:
            for table in (Job.__table__, AvatarRow.__table__):
                present = {column["name"] for column in inspect(connection).get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and column.nullable:
                        kind = column.type.compile(engine.dialect)
                        connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                        added.add(f"{table.name}.{column.name}")
            if "jobs.kind" in added:
                connection.execute(update(Job).values(kind="render"))
            if "jobs.kid" in added:  # render jobs always recorded their key in the inputs
                connection.execute(update(Job).where(Job.kid.is_(None)).values(kid=Job.inputs["kid"].as_string()))
            for table in (Job.__table__, AvatarRow.__table__):
                for index in table.indexes:
                    index.create(connection, checkfirst=True)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._session()

    def create_job(
        self, owner: Owner, inputs: dict[str, Any], *, idempotency_key: str | None = None,
        fingerprint: str | None = None, kind: str = "render", callback_url: str | None = None,
        avatar: tuple[str, str] | None = None, job_id: str | None = None, queue: str | None = None,
        stored_bytes: int = 0, quota: Quota | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; returns (job, created). An existing job under the same key is returned as is.

        Raises IdempotencyConflict when the key was used with a different fingerprint, QuotaExceeded when
        the insert would take the owner's key past ``quota`` (checked in the same transaction, so concurrent
        submits cannot overshoot it).
        """
        scoped = None if idempotency_key is None else scoped_idempotency_key(owner.kid, idempotency_key)
        if scoped is not None:
            existing = self._by_key(owner, scoped)
            if existing is not None:
                return self._same_request(existing, fingerprint), False
        now = utcnow()
        job = Job(id=job_id or new_job_id(), sub=owner.sub, kid=owner.kid, status="queued", stage=None, progress=0.0,
                  attempts=0, inputs=inputs, outputs=[], idempotency_key=scoped, request_fingerprint=fingerprint,
                  created_at=now, updated_at=now, kind=kind, callback_url=callback_url, callback_attempts=0,
                  queue=queue, stored_bytes=stored_bytes)
        try:
            with self.session() as session, session.begin():
                if quota is not None and owner.kid is not None:
                    self._lock_key(session, owner.kid)
                session.add(job)
                if avatar is not None:  # (avatar id, name): the avatar an avatar job makes, owned by the key
                    session.add(AvatarRow(id=avatar[0], sub=owner.sub, kid=owner.kid, name=avatar[1],
                                          status="processing", job_id=job.id, created_at=now, stored_bytes=0))
                session.flush()  # on SQLite the insert takes the write lock, so the counts below are current
                if quota is not None and owner.kid is not None:
                    adding = {"active_jobs": 1, "avatars": int(avatar is not None), "stored_bytes": stored_bytes}
                    self._check_quota(session, owner.kid, quota, adding)
        except IntegrityError:
            if scoped is None:
                raise
            existing = self._by_key(owner, scoped)  # lost a race with the same key
            if existing is None:
                raise
            return self._same_request(existing, fingerprint), False
        return job, True

    @staticmethod
    def _lock_key(session: Session, kid: str) -> None:
        """Serialise quota checks per key on PostgreSQL (SQLite has one writer at a time anyway)."""
        if session.get_bind().dialect.name == "postgresql":
            number = int.from_bytes(hashlib.sha256(f"quota:{kid}".encode()).digest()[:8], "big", signed=True)
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": number})

    def _check_quota(self, session: Session, kid: str, quota: Quota, adding: dict[str, int]) -> None:
        """Raise QuotaExceeded when the counts, this insert included, pass a limit; ``used`` excludes the insert."""
        usage = self._usage(session, kid)
        for what, limit in (("active_jobs", quota.active_jobs), ("avatars", quota.avatars),
                            ("stored_bytes", quota.stored_bytes)):
            if limit and usage[what] > limit and (adding[what] or what == "stored_bytes"):
                raise QuotaExceeded(what, limit, usage[what] - adding[what])

    def usage(self, kid: str) -> dict[str, int]:
        """What a key holds now: active jobs, avatars and stored bytes (the quantities ``Quota`` limits)."""
        with self.session() as session:
            return self._usage(session, kid)

    @staticmethod
    def _usage(session: Session, kid: str) -> dict[str, int]:
        active = session.scalar(select(func.count()).select_from(Job).where(Job.kid == kid, Job.status.in_(ACTIVE)))
        avatars = session.scalar(select(func.count()).select_from(AvatarRow).where(
            AvatarRow.kid == kid, AvatarRow.status != "failed"))
        job_bytes = session.scalar(select(func.coalesce(func.sum(Job.stored_bytes), 0)).where(
            Job.kid == kid, Job.purged_at.is_(None)))
        avatar_bytes = session.scalar(select(func.coalesce(func.sum(AvatarRow.stored_bytes), 0)).where(
            AvatarRow.kid == kid))
        return {"active_jobs": int(active or 0), "avatars": int(avatars or 0),
                "stored_bytes": int(job_bytes or 0) + int(avatar_bytes or 0)}

    def next_purge(self, kid: str, retention_s: float) -> datetime | None:
        """When retention next frees some of the key's storage (its oldest finished, unpurged job)."""
        with self.session() as session:
            oldest = session.scalar(select(func.min(Job.finished_at)).where(
                Job.kid == kid, Job.purged_at.is_(None), Job.finished_at.is_not(None)))
        oldest = _aware(oldest)
        return None if oldest is None else oldest + timedelta(seconds=retention_s)

    @staticmethod
    def _same_request(job: Job, fingerprint: str | None) -> Job:
        if job.request_fingerprint != fingerprint:
            raise IdempotencyConflict(job)
        return job

    def _by_key(self, owner: Owner, scoped_key: str) -> Job | None:
        with self.session() as session:
            return session.scalars(select(Job).where(Job.sub == owner.sub, Job.idempotency_key == scoped_key)).first()

    def get_job(self, job_id: str, owner: Owner | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another owner (``owner=None``: any owner)."""
        with self.session() as session:
            job = session.get(Job, job_id)
        if job is None or (owner is not None and (job.kid, job.sub) != (owner.kid, owner.sub)):
            return None
        return job

    def list_jobs(self, owner: Owner, after: tuple[datetime, str] | None = None, limit: int = 20) -> Page:
        """The owner's jobs, newest first, keyset-paginated on (created_at, id) so inserts never shift a page."""
        query = select(Job).where(Job.kid == owner.kid, Job.sub == owner.sub)
        if after is not None:
            created, job_id = after
            query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self.session() as session:
            jobs: Sequence[Job] = session.scalars(query).all()
        page = list(jobs[:limit])
        more = len(jobs) > limit
        return Page(page, (page[-1].created_at, page[-1].id) if more and page else None)

    def mark_dispatched(self, job_id: str, previous: datetime | None = None) -> bool:
        """Record a publish; with ``previous``, only if nobody re-published since (so one reaper wins)."""
        query = update(Job).where(Job.id == job_id)
        if previous is not None:
            query = query.where(Job.dispatched_at == previous)
        with self.session() as session, session.begin():
            result = session.execute(query.values(dispatched_at=utcnow()))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def claim_undispatched(self, job_id: str) -> bool:
        """Take the right to publish a queued job nobody published yet (one reaper wins)."""
        with self.session() as session, session.begin():
            result = session.execute(update(Job).where(
                Job.id == job_id, Job.status == "queued", Job.dispatched_at.is_(None)).values(dispatched_at=utcnow()))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def claim(self, job_id: str, attempt: int, owner: str, lease_s: float, dead_owner: str | None = None) -> int | None:
        """Start attempt ``attempt + 1``; the new attempt number, or None when this delivery must not run.

        A queued job is claimable; a running one only when its lease ran out (its worker stopped beating)
        or its lease holder is ``dead_owner`` (a process on this host known to be gone). So a duplicate
        delivery of a message for a job that is still being rendered is refused.
        """
        now = utcnow()
        free = or_(Job.status == "queued", Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
        if dead_owner is not None:
            free = or_(free, Job.lease_owner == dead_owner)
        with self.session() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempt, Job.status.in_(ACTIVE), free)
                .values(status="running", attempts=attempt + 1, stage="starting", progress=0.0, started_at=now,
                        updated_at=now, lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_s))
            )
        return attempt + 1 if result.rowcount == 1 else None  # type: ignore[attr-defined]

    def claim_next(self, queue: str, owner: str, lease_s: float, tries: int = 20) -> Job | None:
        """Claim the queued job of ``queue`` that is fairest to run next; None when none is queued.

        Messages are turns, not tickets: whichever job a message names, the worker that takes it runs the job
        whose owner waited longest for a turn. Keys come first (fewest running jobs, then served longest ago),
        then the subs within a key by the same rule, then the oldest job of the chosen owner. So a key with 40
        queued jobs shares the workers with a key that submits one: that one starts after at most one render.
        Losing a race for a job to another worker just moves on to the next choice.
        """
        for _ in range(tries):
            job = self._fairest_queued(queue)
            if job is None:
                return None
            attempt = self.claim(job.id, job.attempts, owner, lease_s)
            if attempt is not None:
                return self.get_job(job.id)
        return None

    def _fairest_queued(self, queue: str) -> Job | None:
        with self.session() as session:
            heads = session.execute(select(Job.kid, Job.sub, func.min(Job.created_at)).where(
                Job.status == "queued", _in_queue(queue)).group_by(Job.kid, Job.sub)).all()
            if not heads:
                return None
            kids = {kid for kid, _, _ in heads}
            running_by_owner = {(kid, sub): int(n) for kid, sub, n in session.execute(
                select(Job.kid, Job.sub, func.count()).where(Job.status == "running", _in_queue(queue))
                .group_by(Job.kid, Job.sub)).all()}
            served_by_owner = {(kid, sub): when for kid, sub, when in session.execute(
                select(Job.kid, Job.sub, func.max(Job.started_at)).where(
                    or_(Job.kid.in_([k for k in kids if k is not None]), Job.kid.is_(None)), _in_queue(queue),
                    Job.started_at.is_not(None)).group_by(Job.kid, Job.sub)).all()}

            def per_key(table: dict[tuple[str | None, str], Any], kid: str | None, pick: Any) -> Any:
                values = [value for (k, _), value in table.items() if k == kid]
                return pick(values) if values else None

            never = datetime.min.replace(tzinfo=UTC)

            def turn(head: Any) -> tuple[Any, ...]:
                kid, sub, oldest = head
                return (per_key(running_by_owner, kid, sum) or 0, _aware(per_key(served_by_owner, kid, max)) or never,
                        running_by_owner.get((kid, sub), 0), _aware(served_by_owner.get((kid, sub))) or never,
                        _aware(oldest))

            kid, sub, _ = min(heads, key=turn)
            owner_is = Job.kid.is_(None) if kid is None else Job.kid == kid
            return session.scalars(select(Job).where(Job.status == "queued", _in_queue(queue), owner_is,
                                                     Job.sub == sub).order_by(Job.created_at, Job.id).limit(1)).first()

    def running(self, queue: str, limit: int = 1000) -> list[Job]:
        """Running jobs of ``queue``: a worker looks among them for attempts of its own host's dead processes."""
        with self.session() as session:
            return list(session.scalars(select(Job).where(Job.status == "running", _in_queue(queue))
                                        .limit(limit)).all())

    def heartbeat(self, job_id: str, attempt: int, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when the attempt no longer owns the job (canceled, or taken over)."""
        now = utcnow()
        with self.session() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running", Job.lease_owner == owner)
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def update_progress(self, job_id: str, attempt: int, stage: str, progress: float) -> bool:
        with self.session() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
                .values(stage=stage[:32], progress=max(0.0, min(1.0, progress)), updated_at=utcnow())
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def finish(
        self, job_id: str, attempt: int, status: Status, *, outputs: list[dict[str, Any]] | None = None,
        error: dict[str, str] | None = None, timings: dict[str, float] | None = None,
        result: dict[str, Any] | None = None, stored_bytes: int = 0,
    ) -> bool:
        """Move an active job still at ``attempt`` to a terminal status; False when a newer attempt owns it.

        ``stored_bytes``: what a successful attempt published (added to the job's input, for the storage quota).
        """
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status")
        now = utcnow()
        values: dict[str, Any] = {"status": status, "updated_at": now, "finished_at": now, "lease_owner": None,
                                  "lease_expires_at": None, "stage": "done" if status == "succeeded" else status,
                                  **_callback_due(now)}
        if status == "succeeded":
            values.update(progress=1.0, outputs=outputs or [], error_code=None, error_message=None, timings=timings,
                          result=result, stored_bytes=func.coalesce(Job.stored_bytes, 0) + stored_bytes)
        if error is not None:
            values.update(error_code=error.get("code"), error_message=error.get("message"))
        with self.session() as session, session.begin():
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.attempts == attempt, Job.status.in_(ACTIVE)).values(**values)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job whatever its attempt; its worker sees the lost lease and stops."""
        now = utcnow()
        with self.session() as session, session.begin():
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE)).values(
                    status="canceled", stage="canceled", updated_at=now, finished_at=now, lease_owner=None,
                    lease_expires_at=None, error_code="canceled", error_message="canceled by the caller",
                    **_callback_due(now))
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def expired_leases(self, queue: str, limit: int = 100) -> list[Job]:
        """Running jobs of ``queue`` whose worker stopped beating: killed, frozen or cut off."""
        with self.session() as session:
            return list(session.scalars(select(Job).where(
                Job.status == "running", Job.lease_expires_at < utcnow(), _in_queue(queue)).limit(limit)).all())

    def requeue(self, job_id: str, attempt: int) -> bool:
        """running (lease expired) → queued and not dispatched, so exactly one reaper re-publishes it."""
        now = utcnow()
        with self.session() as session, session.begin():
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.attempts == attempt, Job.status == "running",
                                  Job.lease_expires_at < now)
                .values(status="queued", stage="requeued", lease_owner=None, lease_expires_at=None,
                        dispatched_at=None, updated_at=now)
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def queued(self, queue: str, limit: int = 1000) -> list[Job]:
        """Queued jobs of ``queue``, oldest first: the reaper checks each has a message somewhere."""
        with self.session() as session:
            return list(session.scalars(select(Job).where(Job.status == "queued", _in_queue(queue))
                                        .order_by(Job.created_at).limit(limit)).all())

    def counts_by_status(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {status: 0 for status in STATUSES} | {str(status): int(n) for status, n in rows}

    def failures_by_reason(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(Job.error_code, func.count()).where(Job.status == "failed")
                                   .group_by(Job.error_code)).all()
        return {str(code or "unknown"): int(n) for code, n in rows}

    # --- callbacks ---------------------------------------------------------------------------------

    def callbacks_due(self, limit: int = 20) -> list[Job]:
        with self.session() as session:
            return list(session.scalars(select(Job).where(
                Job.callback_status == "pending", Job.callback_next_at <= utcnow()).limit(limit)).all())

    def claim_callback(self, job: Job, hold_s: float) -> bool:
        """Take one delivery attempt (one notifier wins); ``hold_s`` later it is due again if this one dies."""
        with self.session() as session, session.begin():
            result = session.execute(update(Job).where(
                Job.id == job.id, Job.callback_status == "pending", Job.callback_attempts == job.callback_attempts,
            ).values(callback_attempts=(job.callback_attempts or 0) + 1,
                     callback_next_at=utcnow() + timedelta(seconds=hold_s)))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def callback_done(self, job_id: str, status: str, next_at: datetime | None = None) -> None:
        """``delivered``, ``failed``, or still ``pending`` until ``next_at``."""
        with self.session() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(callback_status=status,
                                                                        callback_next_at=next_at))

    # --- retention ---------------------------------------------------------------------------------

    def expired_files(self, before: datetime, limit: int = 100) -> list[Job]:
        """Finished jobs whose files outlived retention and are still on disk."""
        with self.session() as session:
            return list(session.scalars(select(Job).where(
                Job.status.in_(TERMINAL), Job.finished_at < before, Job.purged_at.is_(None)).limit(limit)).all())

    def existing_job_ids(self, job_ids: Sequence[str], chunk: int = 500) -> set[str]:
        """Which of ``job_ids`` have a row."""
        found: set[str] = set()
        with self.session() as session:
            for start in range(0, len(job_ids), chunk):
                found.update(session.scalars(select(Job.id).where(Job.id.in_(job_ids[start:start + chunk]))).all())
        return found

    def mark_purged(self, job_id: str) -> None:
        with self.session() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(purged_at=utcnow(), stored_bytes=0))

    # --- avatars -----------------------------------------------------------------------------------

    def avatar(self, avatar_id: str) -> AvatarRow | None:
        with self.session() as session:
            return session.get(AvatarRow, avatar_id)

    def avatars(self) -> list[AvatarRow]:
        """Every API-made avatar, newest first (the API filters them by key)."""
        with self.session() as session:
            return list(session.scalars(select(AvatarRow).order_by(AvatarRow.created_at.desc())).all())

    def set_avatar_status(self, avatar_id: str, status: str, error_message: str | None = None,
                          stored_bytes: int | None = None) -> None:
        values: dict[str, Any] = {"status": status, "error_message": error_message}
        if stored_bytes is not None:
            values["stored_bytes"] = stored_bytes
        with self.session() as session, session.begin():
            session.execute(update(AvatarRow).where(AvatarRow.id == avatar_id).values(**values))

    def delete_avatar(self, avatar_id: str) -> None:
        with self.session() as session, session.begin():
            row = session.get(AvatarRow, avatar_id)
            if row is not None:
                session.delete(row)


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates (min, max) come back naive on SQLite: they are UTC like every stored time."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _in_queue(queue: str) -> Any:
    """Rows of ``queue``; rows from before the column existed count as the default queue's."""
    return or_(Job.queue == queue, Job.queue.is_(None)) if queue == DEFAULT_QUEUE else Job.queue == queue


def _callback_due(now: datetime) -> dict[str, Any]:
    """On reaching a final status, a job with a callback URL owes one delivery, due now."""
    has_callback = Job.callback_url.is_not(None)
    return {"callback_status": case((has_callback, "pending"), else_=None),
            "callback_next_at": case((has_callback, now), else_=None)}
