"""Tenants: who owns what, what each key may hold, and whose job runs next.

A caller is an API key plus the ``sub`` its token names; any key holder can mint any ``sub``, so a ``sub``
alone must never be enough to read, cancel or replay someone's job. Avatars belong to the key (a Dify
workspace). Per-key quotas are checked in the insert's own transaction, so concurrent submits cannot
overshoot them, and workers take turns between keys. The API runs in-process on a real Redis (jobs just
queue) over SQLite and over a real PostgreSQL server, where NUL characters and over-long strings would be
refused by the database itself.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from bridge.app import create_app
from bridge.auth import SCOPES, mint_token
from bridge.db import Database, Owner
from bridge.keys import KeyStore, parse_api_key
from bridge.retention import Retention
from bridge.storage import Storage
from engine import EngineSettings
from tests.bridge_fixtures import AUD, ISS, Bridge, RedisServer, bridge_with_worker, make_settings
from tests.pg_fixture import PostgresServer

PHOTO = "astronaut-photo"
ALL = sorted(SCOPES)


@dataclass
class Api:
    """The API without a worker: accepted jobs stay queued, which is what counts against a quota."""

    app: Any
    root: Path
    keys: KeyStore
    db: Database

    def key(self, admin: bool = False) -> str:
        return self.keys.create(admin=admin)

    def headers(self, key: str, sub: str = "tenant-a", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(key, sub, ALL, AUD, ISS)}", **extra}

    def submit(self, key: str, sub: str = "tenant-a", body: dict[str, Any] | None = None, **headers: str) -> Any:
        return self.app.test_client().post("/v1/jobs", json=body or {"text": "Hello there.", "avatar_id": PHOTO},
                                           headers=self.headers(key, sub, **headers))

    def job_folders(self) -> set[str]:
        return {path.name for path in Storage(self.root).job_folders()}


@pytest.fixture(scope="module")
def make_api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path,
             job_table: str) -> Callable[..., Api]:
    """An API over the module's job table with the given settings (quotas), sharing one storage root."""
    root = tmp_path_factory.mktemp("bridge")
    made: list[Database] = []

    def make(**overrides: Any) -> Api:
        settings = make_settings(root, redis_server.url, database_url=job_table, **overrides)
        engine_settings = EngineSettings(_env_file=None, storage_root=storage)  # type: ignore[call-arg]
        app = create_app(settings, engine_settings=engine_settings)
        db = Database(settings.database)
        made.append(db)
        return Api(app, root, KeyStore(settings.keys_path), db)

    return make


@pytest.fixture(scope="module")
def api(make_api: Callable[..., Api]) -> Api:
    return make_api(quota_active_jobs=3, quota_avatars=2)


def problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = dict(response.get_json())
    if field is not None:
        assert body.get("field") == field, body
    return body


def upload_avatar(api: Api, key: str, image: Path, sub: str = "tenant-a", filename: str = "me.png",
                  **headers: str) -> Any:
    return api.app.test_client().post("/v1/avatars", headers=api.headers(key, sub, **headers),
                                      content_type="multipart/form-data", data={"file": (image.open("rb"), filename)})


# --- 1. a tenant is the key plus the sub ---------------------------------------------------------


def test_another_key_minting_the_same_sub_sees_nothing(api: Api) -> None:
    key_a, key_b, admin = api.key(), api.key(), api.key(admin=True)
    client = api.app.test_client()
    theirs = api.submit(key_b, "victim", **{"Idempotency-Key": "shared-key"})
    assert theirs.status_code == 202
    job_id = theirs.get_json()["id"]

    problem(client.get(f"/v1/jobs/{job_id}", headers=api.headers(key_a, "victim")), 404)
    problem(client.post(f"/v1/jobs/{job_id}/cancel", headers=api.headers(key_a, "victim")), 404)
    listed = client.get("/v1/jobs", headers=api.headers(key_a, "victim")).get_json()["jobs"]
    assert job_id not in {job["id"] for job in listed}
    mine = api.submit(key_a, "victim", **{"Idempotency-Key": "shared-key"})  # the same key, another tenant
    assert mine.status_code == 202 and mine.get_json()["id"] != job_id

    still = client.get(f"/v1/jobs/{job_id}", headers=api.headers(key_b, "victim")).get_json()
    assert still["status"] == "queued"  # not canceled by the other key
    assert [j["id"] for j in client.get("/v1/jobs", headers=api.headers(key_b, "victim")).get_json()["jobs"]] \
        == [job_id]
    assert client.get(f"/v1/jobs/{job_id}", headers=api.headers(admin, "operator")).status_code == 200


@pytest.mark.parametrize("sub", ["", "a\x00b", "line\nbreak", "\x1b[31mred", "\u202egnp.exe", "x" * 256])
def test_sub_must_be_1_to_255_printable_characters(api: Api, sub: str) -> None:
    body = problem(api.app.test_client().get("/v1/jobs", headers=api.headers(api.key(), sub)), 401)
    assert body["code"] == "invalid_sub" and "sub claim" in body["detail"]


def test_a_255_character_sub_is_fine(api: Api) -> None:
    assert api.app.test_client().get("/v1/jobs", headers=api.headers(api.key(), "é" * 255)).status_code == 200


# --- 5. strings the database would refuse are refused first --------------------------------------


def test_nul_characters_in_urls_are_422_before_any_row(api: Api) -> None:
    key = api.key()
    before = api.job_folders()
    for field, body in (("callback_url", {"text": "Hi.", "callback_url": "https://example.com/a\x00b"}),
                        ("audio_url", {"audio_url": "https://example.com/a\x00.mp3"}),
                        ("audio_url", {"audio_url": "https://example.com/has space.mp3"})):
        refused = problem(api.submit(key, body=body), 422, field)
        assert "control characters" in refused["detail"]
    client = api.app.test_client()
    problem(client.post("/v1/avatars", json={"url": "https://example.com/\x00.png"}, headers=api.headers(key)),
            422, "url")
    assert client.get("/v1/jobs", headers=api.headers(key)).get_json()["jobs"] == []
    assert api.job_folders() == before
    spoken = api.submit(key, body={"text": "Hello\x00 there.", "avatar_id": PHOTO})  # stored as JSON, spoken as a space
    assert spoken.status_code == 202, spoken.get_data(as_text=True)


def test_avatar_names_lose_control_and_direction_characters(api: Api, sample_media: Path) -> None:
    key = api.key()
    client = api.app.test_client()

    def named(name: str | None, filename: str = "me.png") -> str:
        form: dict[str, Any] = {"file": ((sample_media / "face.png").open("rb"), filename)}
        if name is not None:
            form["name"] = name
        response = client.post("/v1/avatars", headers=api.headers(key), content_type="multipart/form-data",
                               data=form)
        assert response.status_code == 202, response.get_data(as_text=True)
        avatar_id = response.get_json()["avatar"]["id"]
        assert client.delete(f"/v1/avatars/{avatar_id}", headers=api.headers(key)).status_code == 204  # quota
        return str(response.get_json()["avatar"]["name"])

    assert named("\u202egnp.exe") == "gnp.exe"  # would display as "exe.png"
    assert named("Ada\x00 Lovelace\u2066\u2069") == "Ada Lovelace"  # NUL: PostgreSQL refuses it
    assert named("x" * 300) == "x" * 100
    assert named(None, "\u202eav\x00atar\x07.png") == "avatar.png"  # the file name stands in for a missing name


def test_a_failed_insert_leaves_no_folder(api: Api, sample_media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_: Any, **__: Any) -> Any:
        raise OperationalError("INSERT", {}, ConnectionError("the database went away"))

    monkeypatch.setattr(Database, "create_job", down)
    before = api.job_folders()
    response = api.app.test_client().post(
        "/v1/jobs", headers=api.headers(api.key()), content_type="multipart/form-data",
        data={"avatar_id": PHOTO, "audio": ((sample_media / "speech.wav").open("rb"), "speech.wav")})
    problem(response, 503)
    assert api.job_folders() == before  # the upload was moved in, then removed again
    assert list((api.root / "tmp").iterdir()) == []


def test_job_folders_without_a_row_are_swept(api: Api) -> None:
    storage = Storage(api.root)
    kept = api.submit(api.key()).get_json()["id"]
    old_orphan, new_orphan = uuid.uuid4().hex, uuid.uuid4().hex
    for job_id in (old_orphan, new_orphan):
        (storage.job_dir(job_id) / "inputs").mkdir(parents=True)
        (storage.job_dir(job_id) / "inputs" / "audio.wav").write_bytes(b"RIFF")
    hour_ago = time.time() - 3600
    for job_id in (old_orphan, kept):
        storage.job_dir(job_id).mkdir(parents=True, exist_ok=True)
        os.utime(storage.job_dir(job_id), (hour_ago, hour_ago))
    assert Retention(api.db, storage, None, retention_s=86400).drop_orphans() == [old_orphan]
    assert old_orphan not in api.job_folders() and {kept, new_orphan} <= api.job_folders()


def test_database_errors_never_carry_the_values(postgres_server: PostgresServer) -> None:
    """Tracebacks are logged; the SQL parameters (a callback URL, a name) must not be in them. PostgreSQL, since
    SQLite does not enforce column lengths."""
    db = Database(postgres_server.create_database(f"errors_{uuid.uuid4().hex[:12]}"))
    db.create_all()
    secret_url = "https://hooks.example.com/t0ps3cret?token=abc"
    with pytest.raises(DBAPIError) as caught:  # a 40-character id in a 32-character column
        db.create_job(Owner("k", "s"), {"text": "x"}, job_id="x" * 40, callback_url=secret_url)
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert all(secret_url not in str(e) and "t0ps3cret" not in repr(e.args) for e in chain), chain
    db.dispose()


# --- 6. smaller holes ----------------------------------------------------------------------------


def test_a_cursor_with_an_impossible_date_is_422(api: Api) -> None:
    raw = json.dumps(["0001-01-01T00:00:00+14:00", "a" * 32]).encode()
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    response = api.app.test_client().get(f"/v1/jobs?cursor={cursor}", headers=api.headers(api.key()))
    assert "next_cursor" in problem(response, 422, "cursor")["detail"]


def test_replaying_an_avatar_upload_after_its_deletion_is_410(api: Api, sample_media: Path) -> None:
    key = api.key()
    first = upload_avatar(api, key, sample_media / "face.png", **{"Idempotency-Key": "avatar-once"})
    assert first.status_code == 202
    avatar_id = first.get_json()["avatar"]["id"]
    client = api.app.test_client()
    assert client.delete(f"/v1/avatars/{avatar_id}", headers=api.headers(key)).status_code == 204
    replay = upload_avatar(api, key, sample_media / "face.png", **{"Idempotency-Key": "avatar-once"})
    gone = problem(replay, 410, "Idempotency-Key")
    assert gone["code"] == "avatar_deleted" and "new Idempotency-Key" in gone["detail"]


def test_file_parts_are_checked(api: Api, sample_media: Path) -> None:
    key = api.key()
    client = api.app.test_client()
    wav = sample_media / "speech.wav"

    def post(url: str, data: dict[str, Any]) -> Any:
        return client.post(url, headers=api.headers(key), content_type="multipart/form-data", data=data)

    misspelt = problem(post("/v1/jobs", {"avatar_id": PHOTO, "audoi": (wav.open("rb"), "a.wav")}), 422, "audoi")
    assert "'audio'" in misspelt["detail"]
    twice = post("/v1/jobs", {"avatar_id": PHOTO, "audio": [(wav.open("rb"), "a.wav"), (wav.open("rb"), "b.wav")]})
    assert "exactly one" in problem(twice, 422, "audio")["detail"]
    empty = problem(post("/v1/avatars", {"file": (io.BytesIO(b""), "")}), 422, "file")
    assert "empty" in empty["detail"]
    nameless = post("/v1/jobs", {"avatar_id": PHOTO, "audio": (wav.open("rb"), "")})  # content, but no file name
    assert nameless.status_code == 202, nameless.get_data(as_text=True)
    picture = post("/v1/avatars", {"file": ((sample_media / "face.png").open("rb"), "")})
    assert picture.status_code == 202 and picture.get_json()["avatar"]["name"] == "avatar"
    client.delete(f"/v1/avatars/{picture.get_json()['avatar']['id']}", headers=api.headers(key))


def test_a_form_field_spelt_null_means_absent(api: Api, sample_media: Path) -> None:
    """How OpenAPI tools send a null in multipart: the same as leaving the field out, as in JSON."""
    key = api.key()
    client = api.app.test_client()

    def post(data: dict[str, Any]) -> Any:
        return client.post("/v1/jobs", headers=api.headers(key), content_type="multipart/form-data", data=data)

    assert "none of them" in problem(post({"text": "null", "avatar_id": PHOTO}), 422, "text")["detail"]
    with_audio = post({"text": "null", "avatar_id": PHOTO, "audio": ((sample_media / "speech.wav").open("rb"),
                                                                     "speech.wav")})
    assert with_audio.status_code == 202, with_audio.get_data(as_text=True)


# --- 7. quotas -----------------------------------------------------------------------------------


def test_active_jobs_are_limited_per_key(api: Api) -> None:
    key, other, admin = api.key(), api.key(), api.key(admin=True)
    accepted = [api.submit(key, f"user-{n}").get_json()["id"] for n in range(3)]  # any mix of subs
    refused = problem(api.submit(key, "user-9"), 429, "active_jobs")
    assert refused["code"] == "quota_exceeded" and (refused["limit"], refused["used"]) == (3, 3)
    assert "wait for some to finish" in refused["detail"]
    assert int(api.submit(key, "user-9").headers["Retry-After"]) > 0
    assert api.submit(other).status_code == 202  # other keys are not affected
    assert all(api.submit(admin).status_code == 202 for _ in range(4))  # the operator's key has no quota
    client = api.app.test_client()
    assert client.post(f"/v1/jobs/{accepted[0]}/cancel", headers=api.headers(key, "user-0")).status_code == 200
    assert api.submit(key, "user-9").status_code == 202  # a freed slot is usable at once


def test_concurrent_submits_cannot_overshoot_the_quota(api: Api) -> None:
    key = api.key()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(lambda n: api.submit(key, f"burst-{n}").status_code, range(10)))
    assert statuses == [202] * 3 + [429] * 7


def test_avatars_are_limited_per_key(api: Api, sample_media: Path) -> None:
    key = api.key()
    for _ in range(2):
        assert upload_avatar(api, key, sample_media / "face.png").status_code == 202
    refused = problem(upload_avatar(api, key, sample_media / "face.png", sub="someone-else"), 429, "avatars")
    assert "DELETE /v1/avatars" in refused["detail"]


def test_stored_bytes_are_limited_per_key(make_api: Callable[..., Api], sample_media: Path) -> None:
    wav = sample_media / "speech.wav"
    api = make_api(quota_stored_bytes=int(wav.stat().st_size * 1.5))
    key = api.key()

    def upload() -> Any:
        return api.app.test_client().post("/v1/jobs", headers=api.headers(key), content_type="multipart/form-data",
                                          data={"avatar_id": PHOTO, "audio": (wav.open("rb"), "speech.wav")})

    assert upload().status_code == 202
    before = api.job_folders()
    refused = problem(upload(), 429, "stored_bytes")
    assert "retention" in refused["detail"] or "expire" in refused["detail"]
    assert refused["used"] == wav.stat().st_size
    assert api.job_folders() == before  # the refused upload's copy is gone


# --- 7. fair turns -------------------------------------------------------------------------------


def test_workers_take_turns_between_keys_and_subs(job_table: str) -> None:
    """Order of claims when each job finishes before the next is claimed, and while one is still running."""
    db = Database(job_table)
    db.create_all()
    queue = f"fair-{uuid.uuid4().hex[:8]}"
    made: dict[str, str] = {}
    for name, owner in (("a1", Owner("aaaa0001", "a")), ("a2", Owner("aaaa0001", "a")),
                        ("a3", Owner("aaaa0001", "a")), ("b1", Owner("bbbb0002", "b")),
                        ("cx1", Owner("cccc0003", "x")), ("cy1", Owner("cccc0003", "y")),
                        ("cx2", Owner("cccc0003", "x"))):
        made[db.create_job(owner, {"text": name}, queue=queue)[0].id] = name
    order = []
    while (job := db.claim_next(queue, "host:1", lease_s=30)) is not None:
        order.append(made[job.id])
        assert db.finish(job.id, job.attempts, "succeeded")
    assert order == ["a1", "b1", "cx1", "a2", "cy1", "a3", "cx2"]

    busy = f"busy-{uuid.uuid4().hex[:8]}"
    first = db.create_job(Owner("aaaa0001", "a"), {"text": "a"}, queue=busy)[0]
    db.create_job(Owner("aaaa0001", "a"), {"text": "a"}, queue=busy)
    late = db.create_job(Owner("bbbb0002", "b"), {"text": "b"}, queue=busy)[0]
    running = db.claim_next(busy, "host:1", lease_s=30)
    assert running is not None and running.id == first.id
    second = db.claim_next(busy, "host:2", lease_s=30)  # A still has a job running: B goes first
    assert second is not None and second.id == late.id
    db.dispose()


@pytest.fixture
def one_worker(tmp_path: Path, redis_server: RedisServer, storage: Path) -> Iterator[Bridge]:
    with bridge_with_worker(tmp_path / "bridge", redis_server.url, storage, queue=f"q{uuid.uuid4().hex[:8]}") as b:
        yield b


def test_a_late_tenant_waits_for_at_most_one_render(one_worker: Bridge) -> None:
    """Tenant A queues a backlog; B's one job, submitted while A's first renders, is the next to start."""
    bridge = one_worker
    other_key = KeyStore(bridge.settings.keys_path).create()
    backlog = [bridge.submit({"text": f"Backlog sentence number {n}.", "avatar_id": PHOTO}).get_json()["id"]
               for n in range(6)]
    bridge.wait(backlog[0], until=frozenset({"running", "succeeded"}))
    waiting = {job_id for job_id in backlog if bridge.get(job_id).get_json()["status"] == "queued"}
    token = mint_token(other_key, "tenant-b", ["jobs:read", "jobs:write"], AUD, ISS)
    late = bridge.client.post("/v1/jobs", json={"text": "Just one.", "avatar_id": PHOTO},
                              headers={"Authorization": f"Bearer {token}"}).get_json()["id"]
    kid_b = parse_api_key(other_key)[0]
    db = Database(bridge.settings.database)
    finished = {job_id: bridge.wait(job_id) for job_id in backlog}
    b_job = db.get_job(late, Owner(kid_b, "tenant-b"))
    assert b_job is not None and b_job.status == "succeeded" and b_job.started_at is not None
    started_first = [job_id for job_id in waiting if db.get_job(job_id).started_at < b_job.started_at]
    assert len(started_first) <= 1, (len(waiting), started_first)  # at most the one claimed before B submitted
    assert all(done["status"] == "succeeded" for done in finished.values())
    db.dispose()
