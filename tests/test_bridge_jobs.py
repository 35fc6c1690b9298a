"""Bridge jobs slice: POST /v1/jobs → a real Celery worker → a signed link to an H.264/AAC MP4.

A real redis-server is the broker and replay store; ``python -m bridge worker`` runs as a subprocess
in its own process group; the API runs in-process through the Flask test client. Both share one
job table and one storage root. Every test runs twice: on the default SQLite file and on a real
PostgreSQL server (what a deployment with workers on other hosts uses).
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from bridge.app import create_app
from bridge.auth import mint_token
from bridge.db import Database, Owner
from bridge.keys import KeyStore
from bridge.problems import PROBLEM_MEDIA_TYPE
from bridge.tasks import publish
from tests.bridge_fixtures import (
    AUD,
    ISS,
    Bridge,
    RedisServer,
    bridge_with_worker,
    free_port,
    make_settings,
)

AVATAR = "astronaut-photo"  # the small 512² sample: fast to render



@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path,
           job_table: str) -> Iterator[Bridge]:
    with bridge_with_worker(tmp_path_factory.mktemp("bridge"), redis_server.url, storage,
                            database_url=job_table) as running:
        yield running


@pytest.fixture(scope="module")
def finished(bridge: Bridge) -> dict[str, Any]:
    """One short job, submitted and polled to the end; several tests download its outputs."""
    response = bridge.submit({"text": "Hello there.", "avatar_id": AVATAR})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["Location"] == f"/v1/jobs/{response.get_json()['id']}"
    assert response.headers["Retry-After"] == "2"
    assert response.get_json()["status"] == "queued"
    return bridge.wait(response.get_json()["id"])


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    body = dict(response.get_json(force=True))
    assert body["status"] == status and body["type"] and body["title"]
    if field is not None:
        assert body["field"] == field, body
    return body


def probe(data: bytes, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, check=True, timeout=30)
    return {s["codec_type"]: s["codec_name"] for s in json.loads(out.stdout)["streams"]}


# --- the happy path ----------------------------------------------------------------------------


def test_text_job_renders_and_downloads(bridge: Bridge, finished: dict[str, Any], tmp_path: Path) -> None:
    assert finished["status"] == "succeeded", finished
    assert finished["progress"] == 1.0 and finished["attempts"] == 1 and finished["error"] is None
    [output] = finished["outputs"]
    assert output["avatar_id"] == AVATAR and output["mime"] == "video/mp4"
    assert output["width"] > 0 and output["height"] > 0 and output["duration_s"] > 0.5
    assert urlsplit(output["video_url"]).netloc == f"{bridge.settings.host}:{bridge.settings.port}"
    response = bridge.client.get(path_of(output["video_url"]))
    assert response.status_code == 200
    assert response.mimetype == "video/mp4"
    assert response.headers["Content-Disposition"] == "attachment; filename=video.mp4"
    data = response.get_data()
    assert len(data) == output["size_bytes"]
    assert probe(data, tmp_path) == {"video": "h264", "audio": "aac"}
    poster = bridge.client.get(path_of(output["poster_url"]))
    assert poster.status_code == 200 and poster.mimetype == "image/jpeg"
    assert output["subtitles_url"] is None


def test_two_jobs_back_to_back_both_succeed(bridge: Bridge) -> None:
    """The second is French with the default ``lang`` (auto): the job says which language it picked."""
    ids = [bridge.submit({"text": text, "avatar_id": AVATAR, "subtitles": True}).get_json()["id"]
           for text in ("First one.", "Bonjour à tous, et merci d'être venus.")]
    notes = []
    for job_id in ids:
        body = bridge.wait(job_id)
        assert body["status"] == "succeeded", body
        subtitles = bridge.client.get(path_of(body["outputs"][0]["subtitles_url"]))
        assert subtitles.status_code == 200 and subtitles.mimetype == "text/vtt"
        assert subtitles.get_data(as_text=True).startswith("WEBVTT")
        notes.append(body["outputs"][0]["notes"])
    assert "auto-detected language: French (fr)" in notes[1]
    assert not any("French" in note for note in notes[0])


# --- links -------------------------------------------------------------------------------------


def test_tampered_signature_is_403(bridge: Bridge, finished: dict[str, Any]) -> None:
    url = urlsplit(finished["outputs"][0]["video_url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    forged = query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")
    body = assert_problem(bridge.client.get(f"{url.path}?{urlencode({**query, 'sig': forged})}"), 403)
    assert body["code"] == "bad_link" and forged not in json.dumps(body)
    later = int(query["exp"]) + 3600  # a longer life is a different signed message
    assert_problem(bridge.client.get(f"{url.path}?{urlencode({**query, 'exp': later})}"), 403)
    other_name = url.path.replace("video.mp4", "poster.jpg")
    assert_problem(bridge.client.get(f"{other_name}?{url.query}"), 403)
    assert_problem(bridge.client.get(url.path.replace("video.mp4", "keys.json") + f"?{url.query}"), 404)


def test_expired_link_is_403(bridge: Bridge, finished: dict[str, Any], redis_server: RedisServer) -> None:
    settings = make_settings(bridge.settings.storage_root, redis_server.url, link_ttl_s=1,
                             database_url=bridge.settings.database)
    client = create_app(settings, engine_settings=bridge.engine_settings).test_client()
    body = client.get(f"/v1/jobs/{finished['id']}", headers=bridge.auth()).get_json()
    link = path_of(body["outputs"][0]["video_url"])
    exp = int(parse_qs(urlsplit(link).query)["exp"][0])
    time.sleep(max(0.0, exp - time.time()) + 0.2)
    assert "expired" in assert_problem(client.get(link), 403)["detail"]  # the signature itself is good


# --- access control ----------------------------------------------------------------------------


def test_another_subs_job_is_404_but_admin_sees_it(bridge: Bridge, finished: dict[str, Any]) -> None:
    assert_problem(bridge.get(finished["id"], sub="tenant-b"), 404)
    assert_problem(bridge.get("0" * 32), 404)
    assert_problem(bridge.get("not-a-job"), 404)
    admin_key = KeyStore(bridge.settings.keys_path).create(admin=True)
    token = mint_token(admin_key, "ops", ["jobs:read"], AUD, ISS)
    response = bridge.client.get(f"/v1/jobs/{finished['id']}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.get_json()["id"] == finished["id"]


def test_missing_scope_is_403(bridge: Bridge) -> None:
    response = bridge.client.post("/v1/jobs", json={"text": "Hi.", "avatar_id": AVATAR},
                                  headers=bridge.auth(scopes=["jobs:read"]))
    assert "jobs:write" in assert_problem(response, 403)["detail"]
    assert_problem(bridge.client.get("/v1/jobs", headers=bridge.auth(scopes=["jobs:write"])), 403)
    assert_problem(bridge.client.post("/v1/jobs", json={"text": ""}), 401)  # auth before validation


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"text": ""}, "text"),
    ({"text": "   "}, "text"),
    ({"avatar_id": AVATAR}, "text"),
    ({"text": "x" * 2001, "avatar_id": AVATAR}, "text"),
    ({"text": "Hi.", "avatar_id": "nobody-here"}, "avatar_id"),
    ({"text": "Hi.", "avatar_id": "../../etc/passwd"}, "avatar_id"),
    ({"text": "Hi.", "avatar_id": AVATAR, "speed": 3}, "speed"),
    ({"text": "Hi.", "avatar_id": AVATAR, "resolution": "4k"}, "resolution"),
])
def test_invalid_body_is_422_naming_the_field(bridge: Bridge, body: dict[str, Any], field: str) -> None:
    assert_problem(bridge.submit(body, sub="tenant-invalid"), 422, field)


def test_invalid_requests_leave_no_job(bridge: Bridge) -> None:
    bridge.submit({"text": "", "avatar_id": AVATAR}, sub="tenant-empty")
    bridge.submit({"text": "Hi.", "avatar_id": "nobody-here"}, sub="tenant-empty")
    assert bridge.client.get("/v1/jobs", headers=bridge.auth("tenant-empty")).get_json()["jobs"] == []


# --- idempotency, pagination, broker outage ----------------------------------------------------


def test_idempotency_key(bridge: Bridge) -> None:
    body = {"text": "Same again.", "avatar_id": AVATAR}
    first = bridge.submit(body, sub="tenant-idem", key="order-1")
    again = bridge.submit(dict(body), sub="tenant-idem", key="order-1")
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    conflict = bridge.submit({**body, "text": "Something else."}, sub="tenant-idem", key="order-1")
    assert assert_problem(conflict, 422, "Idempotency-Key")["code"] == "idempotency_key_reused"
    other_sub = bridge.submit(body, sub="tenant-idem-2", key="order-1")  # keys are scoped per sub
    assert other_sub.status_code == 202 and other_sub.get_json()["id"] != first.get_json()["id"]
    assert bridge.wait(first.get_json()["id"], "tenant-idem")["status"] == "succeeded"
    assert bridge.wait(other_sub.get_json()["id"], "tenant-idem-2")["status"] == "succeeded"


def test_concurrent_retries_with_one_key_make_one_job(bridge: Bridge) -> None:
    body = {"text": "Only once, please.", "avatar_id": AVATAR}
    tokens = [bridge.token("tenant-race") for _ in range(20)]

    def post(token: str) -> Any:
        return bridge.app.test_client().post("/v1/jobs", json=body, headers={
            "Authorization": f"Bearer {token}", "Idempotency-Key": "race-1"})

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, tokens))
    assert {r.status_code for r in responses} == {202}, [r.get_data(as_text=True) for r in responses]
    assert len({r.get_json()["id"] for r in responses}) == 1
    listed = bridge.client.get("/v1/jobs", headers=bridge.auth("tenant-race")).get_json()["jobs"]
    assert len(listed) == 1
    assert bridge.wait(listed[0]["id"], "tenant-race")["attempts"] == 1


def test_list_is_paginated_and_per_sub(bridge: Bridge, redis_server: RedisServer) -> None:
    # Jobs inserted straight into the table: the listing is what is under test, not rendering.
    db = Database(bridge.settings.database)
    aside = "not-rendered"  # a queue no worker serves: these rows are for listing, not for the worker's time
    mine = {db.create_job(Owner(bridge.kid, "tenant-list"), {"text": f"job {i}", "avatar_id": AVATAR},
                          queue=aside)[0].id for i in range(5)}
    db.create_job(Owner(bridge.kid, "tenant-other"), {"text": "not yours", "avatar_id": AVATAR}, queue=aside)
    db.create_job(Owner("0badc0de", "tenant-list"), {"text": "another key's tenant-list", "avatar_id": AVATAR},
                  queue=aside)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = bridge.client.get(f"/v1/jobs?{urlencode(query)}", headers=bridge.auth("tenant-list"))
        assert response.status_code == 200, response.get_data(as_text=True)
        page = response.get_json()
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        assert ("Link" in response.headers) == (cursor is not None)
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5 and set(seen) == mine
    created = [bridge.get(job_id, "tenant-list").get_json()["created_at"] for job_id in seen]
    assert created == sorted(created, reverse=True)
    assert_problem(bridge.client.get("/v1/jobs?cursor=bogus", headers=bridge.auth("tenant-list")), 422, "cursor")
    assert_problem(bridge.client.get("/v1/jobs?limit=101", headers=bridge.auth("tenant-list")), 422, "limit")
    db.dispose()


def test_broker_down_is_503_and_the_row_stays_queued(bridge: Bridge, redis_server: RedisServer) -> None:
    settings = make_settings(bridge.settings.storage_root, redis_server.url, database_url=bridge.settings.database,
                             broker_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    client = create_app(settings, engine_settings=bridge.engine_settings).test_client()
    body = {"text": "Queued for later.", "avatar_id": AVATAR}
    started = time.monotonic()
    response = client.post("/v1/jobs", json=body, headers=bridge.auth("tenant-outage", **{"Idempotency-Key": "k1"}))
    assert time.monotonic() - started < 3  # no minutes of kombu connection retries
    problem = assert_problem(response, 503)
    assert response.headers["Retry-After"]
    job_id = problem["job_id"]
    assert bridge.get(job_id, "tenant-outage").get_json()["status"] == "queued"
    retry = bridge.submit(body, sub="tenant-outage", key="k1")  # broker back: the same key re-publishes
    assert retry.status_code == 202 and retry.get_json()["id"] == job_id
    assert bridge.wait(job_id, "tenant-outage")["status"] == "succeeded"


def test_openapi_declares_the_job_routes(bridge: Bridge) -> None:
    spec = bridge.client.get("/openapi.json").get_json()
    post = spec["paths"]["/v1/jobs"]["post"]
    assert set(post["responses"]) >= {"202", "401", "403", "422", "503"}
    assert PROBLEM_MEDIA_TYPE in post["responses"]["422"]["content"]
    assert "Location" in post["responses"]["202"]["headers"]
    assert "404" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "403" in spec["paths"]["/files/{job_id}/{name}"]["get"]["responses"]


def test_engine_error_fails_the_job_with_its_code(bridge: Bridge) -> None:
    """An avatar deleted after its job was accepted: the engine's error, in words for an API user."""
    db = Database(bridge.settings.database)
    job, _ = db.create_job(Owner(bridge.kid, "tenant-fail"), {"text": "Hi.", "avatar_ids": ["deleted-meanwhile"],
                                                              "kid": bridge.kid}, queue=bridge.settings.queue)
    publish(bridge.app.extensions["bridge"].celery, bridge.settings.queue, job.id)
    body = bridge.wait(job.id, "tenant-fail")
    assert body["status"] == "failed" and body["outputs"] == []
    assert body["error"]["code"] == "unknown_avatar", body["error"]
    message = body["error"]["message"]
    assert "deleted" in message and "GET /v1/avatars" in message
    assert "astronaut" not in message and "python -m engine" not in message  # no other avatar, no CLI advice
    db.dispose()


def test_state_changes_are_compare_and_set_on_attempt_and_lease(job_table: str) -> None:
    db = Database(job_table)
    db.create_all()
    owner = Owner("0000beef", "tenant-cas")
    aside = "cas-only"  # a queue no worker serves: only this test claims these jobs
    job, created = db.create_job(owner, {"text": "x", "avatar_id": AVATAR}, queue=aside)
    assert created
    assert db.claim(job.id, 0, "host:1", lease_s=30) == 1
    assert db.claim(job.id, 0, "host:2", lease_s=30) is None  # a duplicate delivery of the same attempt loses
    assert db.claim(job.id, 1, "host:2", lease_s=30) is None  # the job is still rendering under a live lease
    assert db.claim(job.id, 1, "host:2", lease_s=30, dead_owner="host:9") is None  # not the holder
    assert db.heartbeat(job.id, 1, "host:1", lease_s=30) and not db.heartbeat(job.id, 1, "host:2", lease_s=30)
    assert db.claim(job.id, 1, "host:2", lease_s=30, dead_owner="host:1") == 2  # its holder died: take over
    assert not db.heartbeat(job.id, 1, "host:1", lease_s=30)  # the old attempt learns it lost the job
    assert not db.update_progress(job.id, 1, "tts", 0.5) and db.update_progress(job.id, 2, "tts", 0.5)
    assert not db.finish(job.id, 1, "succeeded", outputs=[])  # the dead attempt cannot write
    assert db.finish(job.id, 2, "failed", error={"code": "x", "message": "y"})
    assert db.claim(job.id, 2, "host:3", lease_s=30) is None and not db.finish(job.id, 2, "succeeded")
    row = db.get_job(job.id)
    assert row is not None and (row.status, row.attempts, row.error_code) == ("failed", 2, "x")
    assert row.lease_owner is None and row.lease_expires_at is None
    assert db.get_job(job.id, owner) is not None and db.get_job(job.id, Owner("0000beef", "someone-else")) is None
    assert db.get_job(job.id, Owner("0000feed", "tenant-cas")) is None  # the same sub under another key

    expiring, _ = db.create_job(owner, {"text": "y", "avatar_id": AVATAR}, queue=aside)
    assert db.claim(expiring.id, 0, "host:1", lease_s=0.05) == 1
    time.sleep(0.1)
    assert [j.id for j in db.expired_leases(aside)] == [expiring.id]
    assert db.claim(expiring.id, 1, "host:2", lease_s=30) == 2  # an expired lease is up for grabs
    assert db.cancel(expiring.id) and not db.cancel(expiring.id)
    assert not db.heartbeat(expiring.id, 2, "host:2", lease_s=30)  # the worker sees the cancel
    db.dispose()
