"""Link backend ``minio`` end to end: a real worker uploads outputs to a real S3 server (Ceph radosgw on
loopback) and GET /v1/jobs/{id} hands out presigned links that plain HTTP can download.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from bridge.app import create_app
from tests.bridge_fixtures import Bridge, RedisServer, bridge_with_worker
from tests.conftest import ffprobe
from tests.s3_fixture import S3Server, run_radosgw

BUCKET = "talking-head-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with run_radosgw(tmp_path_factory.mktemp("radosgw")) as server:
        yield server


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, s3: S3Server, storage: Path,
           redis_server: RedisServer) -> Iterator[Bridge]:
    with bridge_with_worker(tmp_path_factory.mktemp("bridge"), redis_server.url, storage, link_backend="minio",
                            s3_endpoint=s3.endpoint, s3_secure=False, s3_access_key=s3.access_key,
                            s3_secret_key=s3.secret_key, s3_bucket=BUCKET, link_ttl_s=600,
                            reaper_interval_s=0.3) as running:
        yield running


@pytest.fixture(scope="module")
def finished(bridge: Bridge) -> dict[str, object]:
    response = bridge.submit({"text": "Straight from the bucket.", "avatar_id": "astronaut-photo"})
    assert response.status_code == 202, response.get_data(as_text=True)
    job = bridge.wait(response.get_json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_presigned_link_downloads_a_valid_mp4(finished: dict, s3: S3Server, tmp_path: Path) -> None:
    [out] = finished["outputs"]
    url = out["video_url"]
    parts = urlsplit(url)
    assert parts.netloc == s3.endpoint and parts.path == f"/{BUCKET}/jobs/{finished['id']}/video.mp4"
    assert "X-Amz-Signature" in parts.query
    response = requests.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"] == "video/mp4"
    assert "attachment" in response.headers["Content-Disposition"]
    assert len(response.content) == out["size_bytes"]
    video = tmp_path / "video.mp4"
    video.write_bytes(response.content)
    assert {s["codec_name"] for s in ffprobe(video)["streams"]} == {"h264", "aac"}
    poster = requests.get(out["poster_url"], timeout=30)
    assert poster.status_code == 200 and poster.content.startswith(b"\xff\xd8")


def test_tampered_link_and_unsigned_object_are_refused(finished: dict, s3: S3Server) -> None:
    url = finished["outputs"][0]["video_url"]
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    signature = query["X-Amz-Signature"]
    query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert requests.get(urlunsplit(parts._replace(query=urlencode(query))), timeout=30).status_code == 403
    assert requests.get(f"http://{s3.endpoint}{parts.path}", timeout=30).status_code == 403  # private


def test_expired_link_is_refused(bridge: Bridge, finished: dict) -> None:
    settings = bridge.settings.model_copy(update={"link_ttl_s": 1})
    short = create_app(settings, engine_settings=bridge.engine_settings)
    client = short.test_client()
    job = client.get(f"/v1/jobs/{finished['id']}", headers=bridge.auth()).get_json()
    url = job["outputs"][0]["video_url"]
    time.sleep(2.5)
    assert requests.get(url, timeout=30).status_code == 403


def test_readyz_checks_the_bucket(bridge: Bridge, finished: dict) -> None:
    body = bridge.client.get("/readyz").get_json()
    assert body["checks"]["object_store"] == "ok", body


def test_retention_deletes_the_objects_too(bridge: Bridge) -> None:
    job = bridge.wait(bridge.submit({"text": "Gone soon.", "avatar_id": "astronaut-photo"}).get_json()["id"])
    url = job["outputs"][0]["video_url"]
    assert requests.get(url, timeout=30).status_code == 200
    db = bridge.app.extensions["bridge"].db
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE jobs SET finished_at = datetime('now', '-8 days') WHERE id = ?",
                                   (job["id"],))
    deadline = time.monotonic() + 20
    while bridge.get(job["id"]).get_json()["files_deleted_at"] is None:
        assert time.monotonic() < deadline, "retention did not run"
        time.sleep(0.1)
    assert requests.get(url, timeout=30).status_code == 404
