"""The rest of the bridge API against a real redis-server and a real worker: audio uploads and URLs, bad
media, SSRF, size limits under gunicorn, batches, cancel, voices, avatars, callbacks and retention.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bridge.app import create_app
from bridge.auth import mint_token
from bridge.callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER
from bridge.keys import KeyStore, parse_api_key
from bridge.storage import Storage
from tests.bridge_fixtures import (
    AUD,
    ISS,
    Bridge,
    Receiver,
    RedisServer,
    bridge_with_worker,
    free_port,
    run_bridge_serve,
    run_receiver,
    worker_env,
)
from tests.conftest import ffprobe

PHOTO = "astronaut-photo"
VIDEO = "astronaut"
FAST = {"reaper_interval_s": 0.3, "job_lease_s": 2.0, "job_heartbeat_s": 0.4, "callback_backoff_s": 0.3}


@pytest.fixture(scope="module")
def media(sample_media: Path) -> Path:
    return sample_media


@pytest.fixture(scope="module")
def receiver(media: Path) -> Iterator[Receiver]:
    with run_receiver(media) as running:
        yield running


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path,
           receiver: Receiver) -> Iterator[Bridge]:
    allow = [f"127.0.0.1:{receiver.port}"]
    with bridge_with_worker(tmp_path_factory.mktemp("bridge"), redis_server.url, storage,
                            fetch_allow_http_hosts=allow, worker_metrics_port=free_port(), **FAST) as running:
        yield running


def upload(bridge: Bridge, path: Path, name: str | None = None, sub: str = "tenant-a", **fields: Any) -> Any:
    form = {**{k: str(v) for k, v in fields.items()}, "audio": (path.open("rb"), name or path.name)}
    return bridge.client.post("/v1/jobs", data=form, headers=bridge.auth(sub), content_type="multipart/form-data")


def problem_of(response: Any, status: int, field: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = dict(response.get_json())
    assert body["field"] == field, body
    return body


def download(bridge: Bridge, url: str) -> bytes:
    parts = urlsplit(url)
    response = bridge.client.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 200
    return bytes(response.data)


# --- audio instead of text --------------------------------------------------------------------


def test_uploaded_audio_is_lip_synced(bridge: Bridge, media: Path, tmp_path: Path) -> None:
    response = upload(bridge, media / "speech.mp3", "my talk.mp3", avatar_id=PHOTO)
    assert response.status_code == 202, response.get_data(as_text=True)
    job = bridge.wait(response.get_json()["id"])
    assert job["status"] == "succeeded", job
    [out] = job["outputs"]
    lead = bridge.engine_settings.lead_in_s + bridge.engine_settings.lead_out_s
    assert abs(out["duration_s"] - (2.0 + lead)) < 0.1
    video = tmp_path / "out.mp4"
    video.write_bytes(download(bridge, out["video_url"]))
    streams = {s["codec_type"]: s for s in ffprobe(video)["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    inputs = Storage(bridge.settings.storage_root).job_dir(job["id"]) / "inputs"
    assert [p.name for p in inputs.iterdir()] == ["audio.mp3"]  # a server-made name, not "my talk.mp3"


def test_audio_url_is_fetched_and_lip_synced(bridge: Bridge, receiver: Receiver) -> None:
    response = bridge.submit({"audio_url": f"{receiver.base}/speech.wav", "avatar_id": PHOTO})
    assert response.status_code == 202, response.get_data(as_text=True)
    job = bridge.wait(response.get_json()["id"])
    assert job["status"] == "succeeded" and job["outputs"][0]["duration_s"] > 2.0, job


@pytest.mark.parametrize(("name", "claimed", "reason"), [
    ("notes.txt", "notes.wav", "not"),
    ("half.mp4", "half.m4a", "incomplete"),
    ("speech-named.mp4", "speech.mp4", "is named .mp4 but the content is WAV"),
    ("list.m3u8", "list.m3u8", "HLS playlist"),
    ("long.wav", "long.wav", "limit"),
    ("clip.mp4", "clip.mp4", "no audio"),
])
def test_bad_audio_uploads_are_422_and_leave_nothing(bridge: Bridge, media: Path, name: str, claimed: str,
                                                     reason: str) -> None:
    before = len(bridge.client.get("/v1/jobs?limit=100", headers=bridge.auth("tenant-bad")).get_json()["jobs"])
    body = problem_of(upload(bridge, media / name, claimed, sub="tenant-bad", avatar_id=PHOTO), 422, "audio")
    assert reason in body["detail"], body
    after = bridge.client.get("/v1/jobs?limit=100", headers=bridge.auth("tenant-bad")).get_json()["jobs"]
    assert len(after) == before == 0  # no job was made
    scratch = Storage(bridge.settings.storage_root).root / "tmp"
    assert not list(scratch.iterdir())  # and the refused file is gone


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379/", "https://127.0.0.1/a.wav", "https://localhost/a.wav", "https://2130706433/a.wav",
    "https://[::1]/a.wav", "https://169.254.169.254/latest/meta-data", "https://10.0.0.1/a.wav",
    "https://100.64.0.1/a.wav", "file:///etc/passwd", "gopher://example.com/", "http://example.com/a.wav",
])
def test_ssrf_audio_urls_are_422(bridge: Bridge, url: str) -> None:
    body = problem_of(bridge.submit({"audio_url": url, "avatar_id": PHOTO}), 422, "audio_url")
    assert body["detail"].startswith("audio_url: ")


def test_redirect_to_loopback_is_422_without_connecting(bridge: Bridge, receiver: Receiver) -> None:
    body = problem_of(bridge.submit({"audio_url": f"{receiver.base}/to-loopback", "avatar_id": PHOTO}), 422,
                      "audio_url")
    assert "redirected to http://127.0.0.1" in body["detail"]
    assert "secret" not in body["detail"]
    assert not receiver.trap_was_hit()


def test_exactly_one_speech_source(bridge: Bridge, receiver: Receiver) -> None:
    body = problem_of(bridge.submit({"text": "Hi.", "audio_url": f"{receiver.base}/speech.wav"}), 422, "text")
    assert "exactly one" in body["detail"]
    problem_of(bridge.submit({"avatar_id": PHOTO}), 422, "text")


# --- batches, cancel, voices --------------------------------------------------------------------


def test_batch_makes_one_video_per_avatar_from_one_speech(bridge: Bridge, tmp_path: Path) -> None:
    response = bridge.submit({"text": "One voice, two faces.", "avatar_ids": [PHOTO, VIDEO], "subtitles": True})
    assert response.status_code == 202, response.get_data(as_text=True)
    job = bridge.wait(response.get_json()["id"])
    assert job["status"] == "succeeded", job
    first, second = job["outputs"]
    assert (first["avatar_id"], second["avatar_id"]) == (PHOTO, VIDEO)
    assert first["duration_s"] == second["duration_s"]  # the same speech
    assert (first["width"], second["width"]) == (512, 1280)
    assert "/video.mp4?" in first["video_url"] and "/video-1.mp4?" in second["video_url"]
    for out in (first, second):
        assert download(bridge, out["subtitles_url"]).startswith(b"WEBVTT")
        assert len(download(bridge, out["video_url"])) == out["size_bytes"]


def test_batch_and_single_avatar_are_exclusive(bridge: Bridge) -> None:
    problem_of(bridge.submit({"text": "Hi.", "avatar_id": PHOTO, "avatar_ids": [PHOTO]}), 422, "avatar_ids")
    problem_of(bridge.submit({"text": "Hi.", "avatar_ids": [PHOTO, "nobody-here"]}), 422, "avatar_ids")
    problem_of(bridge.submit({"text": "Hi.", "avatar_ids": [PHOTO] * 11}), 422, "avatar_ids")


def test_cancel_a_running_job_stops_its_render(bridge: Bridge) -> None:
    text = "This one is long enough to be canceled while it renders. " * 4
    job_id = bridge.submit({"text": text, "avatar_id": VIDEO}).get_json()["id"]
    bridge.wait(job_id, until=frozenset({"running"}))
    response = bridge.client.post(f"/v1/jobs/{job_id}/cancel", headers=bridge.auth())
    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    log = bridge.settings.storage_root / "worker.log"
    deadline = time.monotonic() + 30
    while f"job {job_id} attempt 1 stopped" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the worker kept rendering a canceled job"
        time.sleep(0.1)
    final = bridge.get(job_id).get_json()
    assert final["status"] == "canceled" and final["outputs"] == []
    again = bridge.client.post(f"/v1/jobs/{job_id}/cancel", headers=bridge.auth())
    assert again.status_code == 409 and again.get_json()["code"] == "job_finished"
    assert bridge.client.post(f"/v1/jobs/{job_id}/cancel", headers=bridge.auth("tenant-b")).status_code == 404


def test_a_piper_voice_is_spoken_by_piper(bridge: Bridge) -> None:
    job = bridge.wait(bridge.submit({"text": "Joe speaks.", "avatar_id": PHOTO, "voice": "en_US-joe-medium"})
                      .get_json()["id"])
    assert job["status"] == "succeeded", job


def test_voices_lists_every_backend(bridge: Bridge) -> None:
    voices = bridge.client.get("/v1/voices", headers=bridge.auth()).get_json()["voices"]
    backends = {v["backend"] for v in voices}
    assert {"espeak", "piper"} <= backends
    assert any(v["id"] == "en-us" for v in voices)
    assert bridge.client.get("/v1/voices").status_code == 401


# --- avatars -----------------------------------------------------------------------------------


def test_avatar_upload_is_preprocessed_and_private_to_its_key(bridge: Bridge, media: Path) -> None:
    """An avatar belongs to the API key (a Dify workspace): every sub of that key may use it, no other key."""
    other_key = KeyStore(bridge.settings.keys_path).create()

    def owner() -> dict[str, str]:  # a fresh token per call: each jti is good once
        return bridge.auth(scopes=["jobs:read", "jobs:write", "avatars:write"])

    def other(sub: str = "tenant-a") -> dict[str, str]:  # another key, even minting the owner's own sub
        token = mint_token(other_key, sub, ["jobs:read", "jobs:write", "avatars:write"], AUD, ISS)
        return {"Authorization": f"Bearer {token}"}

    response = bridge.client.post("/v1/avatars", headers=owner(), content_type="multipart/form-data",
                                  data={"name": "Ada", "file": ((media / "face.png").open("rb"), "ada.png")})
    assert response.status_code == 202, response.get_data(as_text=True)
    created = response.get_json()
    avatar_id = created["avatar"]["id"]
    assert created["avatar"]["status"] == "processing" and created["job"]["kind"] == "avatar"
    job = bridge.wait(created["job"]["id"])
    assert job["status"] == "succeeded" and job["avatar"]["id"] == avatar_id, job
    mine = bridge.client.get("/v1/avatars", headers=bridge.auth()).get_json()["avatars"]
    ada = next(a for a in mine if a["id"] == avatar_id)
    assert (ada["status"], ada["name"], ada["kind"], ada["shared"]) == ("ready", "Ada", "photo", False)
    preview = download(bridge, ada["preview_url"])
    assert preview.startswith(b"\xff\xd8")  # a JPEG still
    tampered = urlsplit(ada["preview_url"].replace("sig=", "sig=0"))
    assert bridge.client.get(f"{tampered.path}?{tampered.query}").status_code == 403

    colleague = bridge.client.get("/v1/avatars", headers=bridge.auth("tenant-b")).get_json()["avatars"]
    assert avatar_id in {a["id"] for a in colleague}  # another end user of the same workspace
    used = bridge.wait(bridge.submit({"text": "Ours.", "avatar_id": avatar_id}, sub="tenant-b").get_json()["id"],
                       "tenant-b")
    assert used["status"] == "succeeded", used

    for sub in ("tenant-a", "tenant-b"):
        theirs = bridge.client.get("/v1/avatars", headers=other(sub)).get_json()["avatars"]
        assert avatar_id not in {a["id"] for a in theirs} and PHOTO in {a["id"] for a in theirs}
        refused = problem_of(bridge.client.post("/v1/jobs", json={"text": "Not yours.", "avatar_id": avatar_id},
                                                headers=other(sub)), 422, "avatar_id")
        assert "not yours" in refused["detail"] and "GET /v1/avatars" in refused["detail"]
        assert PHOTO not in refused["detail"]  # it names no other avatar
        assert bridge.client.delete(f"/v1/avatars/{avatar_id}", headers=other(sub)).status_code == 404
    shared = bridge.client.delete(f"/v1/avatars/{PHOTO}", headers=other())
    assert shared.status_code == 403 and shared.get_json()["code"] == "shared_avatar"
    deleter = bridge.auth("tenant-b", scopes=["avatars:write"])  # any end user of the key may delete it
    assert bridge.client.delete(f"/v1/avatars/{avatar_id}", headers=deleter).status_code == 204
    gone = problem_of(bridge.submit({"text": "Gone.", "avatar_id": avatar_id}), 422, "avatar_id")
    assert "deleted, or it is not yours" in gone["detail"]


def test_bad_avatar_uploads_are_422(bridge: Bridge, media: Path, receiver: Receiver) -> None:
    def auth() -> dict[str, str]:
        return bridge.auth(scopes=["avatars:write"])

    response = bridge.client.post("/v1/avatars", headers=auth(), content_type="multipart/form-data",
                                  data={"file": ((media / "speech.wav").open("rb"), "me.wav")})
    problem_of(response, 422, "file")
    problem_of(bridge.client.post("/v1/avatars", headers=auth(), json={"url": "https://10.1.2.3/me.mp4"}), 422, "url")
    problem_of(bridge.client.post("/v1/avatars", headers=auth(), json={"name": "nothing"}), 422, "url")
    no_scope = bridge.client.post("/v1/avatars", headers=bridge.auth(), json={"url": f"{receiver.base}/face.png"})
    assert no_scope.status_code == 403


# --- callbacks and retention ---------------------------------------------------------------------


def test_callback_is_signed_and_retried(bridge: Bridge, receiver: Receiver) -> None:
    receiver.hooks.clear()
    receiver.hook_statuses.put(500)  # the first delivery fails; the second is accepted
    hook = f"{receiver.base}/hook"
    job_id = bridge.submit({"text": "Call me back.", "avatar_id": PHOTO, "callback_url": hook}).get_json()["id"]
    assert bridge.wait(job_id)["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while len(receiver.hooks) < 2:
        assert time.monotonic() < deadline, f"{len(receiver.hooks)} callback(s) arrived"
        time.sleep(0.1)
    time.sleep(1.0)
    assert len(receiver.hooks) == 2  # delivered once it was accepted, never again
    _, secret = parse_api_key(bridge.api_key)
    for attempt, (headers, body) in enumerate(receiver.hooks, start=1):
        expected = hmac.new(secret, f"{headers[TIMESTAMP_HEADER]}.".encode() + body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
        assert headers["X-Delivery-Attempt"] == str(attempt)
        sent = json.loads(body)
        assert sent["id"] == job_id and sent["status"] == "succeeded" and sent["outputs"][0]["video_url"]


def test_ssrf_callback_url_is_422(bridge: Bridge) -> None:
    for url in ("https://127.0.0.1/hook", "http://example.com/hook", "https://169.254.169.254/"):
        problem_of(bridge.submit({"text": "Hi.", "avatar_id": PHOTO, "callback_url": url}), 422, "callback_url")


def test_retention_deletes_old_files_and_says_so(bridge: Bridge) -> None:
    job_id = bridge.submit({"text": "Short lived.", "avatar_id": PHOTO}).get_json()["id"]
    assert bridge.wait(job_id)["status"] == "succeeded"
    storage = Storage(bridge.settings.storage_root)
    assert storage.output_path(job_id, "video.mp4").is_file()
    db = bridge.app.extensions["bridge"].db
    with db.engine.begin() as connection:  # pretend it finished eight days ago
        connection.exec_driver_sql("UPDATE jobs SET finished_at = datetime('now', '-8 days') WHERE id = ?",
                                   (job_id,))
    deadline = time.monotonic() + 20
    while storage.job_dir(job_id).exists():
        assert time.monotonic() < deadline, "retention did not delete the files"
        time.sleep(0.1)
    job = bridge.get(job_id).get_json()
    assert job["status"] == "succeeded" and job["outputs"] == [] and job["files_deleted_at"]


# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_are_off_by_default_and_token_protected(bridge: Bridge) -> None:
    assert bridge.client.get("/metrics").status_code == 404
    token = "m" * 40
    app = create_app(bridge.settings.model_copy(update={"metrics_token": SecretStr(token)}),
                     engine_settings=bridge.engine_settings)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert bridge.wait(bridge.submit({"text": "Count me.", "avatar_id": PHOTO}).get_json()["id"])["status"] == \
        "succeeded"
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.get_data(as_text=True))
               for s in family.samples}
    assert samples[("bridge_jobs", (("status", "succeeded"),))] >= 1
    assert ("bridge_queue_depth", (("queue", bridge.settings.queue),)) in samples
    assert samples[("bridge_storage_free_bytes", ())] > 0
    ages = [v for (name, _), v in samples.items() if name == "bridge_worker_heartbeat_age_seconds"]
    assert ages and min(ages) < 30  # the worker beats


def test_worker_serves_stage_durations(bridge: Bridge) -> None:
    assert bridge.wait(bridge.submit({"text": "Time me.", "avatar_id": PHOTO}).get_json()["id"])["status"] == \
        "succeeded"
    text = requests.get(f"http://127.0.0.1:{bridge.settings.worker_metrics_port}/metrics", timeout=10).text
    counts = {s.labels.get("stage"): s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "bridge_stage_duration_seconds_count"}
    assert counts.get("lipsync", 0) >= 1 and counts.get("tts", 0) >= 1, counts


# --- size limits under the production server ---------------------------------------------------------


@pytest.fixture(scope="module")
def served(bridge: Bridge, storage: Path) -> Iterator[str]:
    """``python -m bridge serve`` (gunicorn, gthread) on the same table and Redis, with a 64 KiB body limit."""
    env = worker_env(bridge.settings, storage, BRIDGE_MAX_CONTENT_LENGTH="65536", BRIDGE_API_WORKERS="1")
    with run_bridge_serve(env, bridge.settings.storage_root / "serve.log") as base:
        yield base


def test_oversized_bodies_are_413(bridge: Bridge, served: str) -> None:
    headers = {"Authorization": f"Bearer {bridge.token()}"}
    big = {"text": "x" * 70_000, "avatar_id": PHOTO}
    response = requests.post(f"{served}/v1/jobs", json=big, headers=headers, timeout=30)
    assert response.status_code == 413 and response.headers["Content-Type"] == "application/problem+json"

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(total // 1024):
            yield b"y" * 1024
        yield b'", "avatar_id": "astronaut-photo"}'

    headers = {"Authorization": f"Bearer {bridge.token()}", "Content-Type": "application/json"}
    chunked = requests.post(f"{served}/v1/jobs", data=chunks(200_000), headers=headers, timeout=30)
    assert chunked.status_code == 413, chunked.text
    assert chunked.headers["Content-Type"] == "application/problem+json"
    headers = {"Authorization": f"Bearer {bridge.token()}", "Content-Type": "application/json"}
    small = requests.post(f"{served}/v1/jobs", data=iter([b'{"text": "Small and chunked.", ',
                                                          b'"avatar_id": "astronaut-photo"}']),
                          headers=headers, timeout=30)
    assert small.status_code == 202, small.text
    upload_headers = {"Authorization": f"Bearer {bridge.token()}"}
    files = {"audio": ("big.wav", b"\0" * 100_000)}
    assert requests.post(f"{served}/v1/jobs", files=files, headers=upload_headers, timeout=30).status_code == 413


def test_request_ids_are_echoed(served: str) -> None:
    response = requests.get(f"{served}/livez", headers={"X-Request-ID": "abc-123"}, timeout=5)
    assert response.headers["X-Request-ID"] == "abc-123"
    assert len(requests.get(f"{served}/livez", timeout=5).headers["X-Request-ID"]) >= 16


def test_secrets_stay_out_of_the_server_log(bridge: Bridge, served: str) -> None:
    token = bridge.token()
    job = requests.post(f"{served}/v1/jobs", json={"text": "Quiet please.", "avatar_id": PHOTO},
                        headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
    links = requests.get(f"{served}/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {bridge.token()}"},
                         timeout=30)
    assert links.status_code == 200
    logs = "".join(p.read_text(errors="replace") for p in bridge.settings.storage_root.glob("*.log"))
    assert f"/v1/jobs/{job['id']}" in logs  # the access log is there…
    assert token not in logs and bridge.api_key not in logs and "&sig=" not in logs  # …without credentials
    lines = [json.loads(line) for line in (bridge.settings.storage_root / "serve.log").read_text().splitlines()
             if line.startswith("{")]
    assert any(line.get("request_id") and line.get("status") == 202 for line in lines)
