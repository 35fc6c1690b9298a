"""Probes: /livez says the process answers; /readyz says it can do work (DB, Redis, storage, S3).

HeyGem's state is reported too when a HeyGem service is configured, but it never makes the API unready:
jobs for the other renderers still run while HeyGem is down or stalled, and an orchestrator that pulled
the API out of rotation for it would stop those as well.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import redis
from apiflask import APIBlueprint, Schema
from apiflask.fields import Dict, String
from flask import Response
from sqlalchemy.exc import SQLAlchemyError

from bridge.api.deps import state
from bridge.problems import NOT_READY, problem
from engine.lipsync.heygem_health import heygem_state

bp = APIBlueprint("health", __name__, tag="health")


class LiveOut(Schema):
    status = String(required=True, metadata={"example": "ok"})


class ReadyOut(Schema):
    status = String(required=True, metadata={"example": "ok"})
    checks = Dict(keys=String(), values=String(), required=True, metadata={"example": {"redis": "ok"}})


@bp.get("/livez")
@bp.output(LiveOut)
@bp.doc(summary="Liveness", description="The process answers. Checks no dependency, so a Redis blip never restarts it.")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
@bp.output(ReadyOut)
@bp.doc(summary="Readiness", description="The job table answers; Redis answers PING; the storage root is writable "
        "with enough free space; the S3 bucket answers (link backend minio). With ENGINE_HEYGEM_URL set, "
        "checks.heygem reports HeyGem's video service (ok, unreachable, stalled, or what to fix in its shared "
        "folder); it is informational and never makes the answer 503.",
        responses={503: "Not ready: the problem's detail and checks name what failed"})
def readyz() -> dict[str, Any] | Response:
    st = state()
    checks = {"database": _check_database(), "redis": _check_redis(st.redis), "storage": _check_storage()}
    if st.object_store is not None:
        checks["object_store"] = st.object_store.ping() or "ok"
    failed = [name for name, result in checks.items() if result != "ok"]
    heygem = heygem_state(st.engine_settings)
    if heygem is not None:
        checks["heygem"] = heygem
    if failed:
        detail = "not ready: " + "; ".join(f"{name}: {checks[name]}" for name in failed)
        return problem(503, None, detail, NOT_READY, headers={"Retry-After": "5"}, checks=checks)
    return {"status": "ok", "checks": checks}


def _check_database() -> str:
    try:
        state().db.ping()
    except SQLAlchemyError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def _check_redis(client: redis.Redis) -> str:
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"


def _check_storage() -> str:
    settings = state().settings
    root = settings.storage_root
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".readyz-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return f"not writable ({type(exc).__name__})"
    if free < settings.min_free_bytes:
        return f"low disk space ({free // 2**20} MiB free, {settings.min_free_bytes // 2**20} MiB required)"
    return "ok"
