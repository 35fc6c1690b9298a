"""Per-key quotas: how many jobs a key may have waiting or running, how many avatars, how many bytes stored.

One tenant must not be able to fill the queue, the avatar store or the disk for everyone else. The limits
come from the settings and are checked by the job table in the same transaction as the insert
(``bridge.db.Quota``), so concurrent submits cannot overshoot them; this module turns a refusal into a 429
problem that says which limit, how far the key is into it, what frees it and when to try again.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Response

from bridge.db import Database, Quota, QuotaExceeded, utcnow
from bridge.problems import TYPE_BASE, problem
from bridge.settings import BridgeSettings

QUOTA_EXCEEDED = TYPE_BASE + "quota-exceeded"
ACTIVE_RETRY_S = 10
"""A job usually renders in seconds; a slot frees up soon."""
AVATAR_RETRY_S = 60
STORAGE_RETRY_MIN_S = 60
STORAGE_RETRY_MAX_S = 24 * 3600


def quota_for(settings: BridgeSettings, admin: bool) -> Quota | None:
    """The caller's limits; admin keys (the operator's own) have none."""
    if admin:
        return None
    return Quota(active_jobs=settings.quota_active_jobs, avatars=settings.quota_avatars,
                 stored_bytes=settings.quota_stored_bytes)


def quota_problem(exc: QuotaExceeded, kid: str, db: Database, settings: BridgeSettings) -> Response:
    """429 with Retry-After; ``field`` names the limit (``active_jobs``, ``avatars`` or ``stored_bytes``)."""
    if exc.what == "active_jobs":
        detail = (f"this API key already has {exc.limit} jobs queued or running, the most the bridge allows per key; "
                  "wait for some to finish (or cancel some), then submit again")
        retry_s = ACTIVE_RETRY_S
    elif exc.what == "avatars":
        detail = (f"this API key already has {exc.limit} avatars, the most the bridge allows per key; delete ones you "
                  "no longer need (DELETE /v1/avatars/{id}), then add this one again")
        retry_s = AVATAR_RETRY_S
    else:
        retention = timedelta(seconds=settings.retention_s)
        detail = (f"this API key stores {_size(exc.used)} of the {_size(exc.limit)} allowed per key (uploads, videos "
                  f"and avatars); delete avatars you no longer need, or wait until finished jobs' files expire "
                  f"({_days(retention)} after they end)")
        freed = db.next_purge(kid, settings.retention_s)
        retry_s = STORAGE_RETRY_MAX_S if freed is None else int((freed - utcnow()).total_seconds())
        retry_s = min(max(retry_s, STORAGE_RETRY_MIN_S), STORAGE_RETRY_MAX_S)
    return problem(429, None, detail, QUOTA_EXCEEDED, exc.what, headers={"Retry-After": str(retry_s)},
                   code="quota_exceeded", limit=exc.limit, used=exc.used)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _days(span: timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:g} days" if days >= 1 else f"{span.total_seconds() / 3600:g} hours"
