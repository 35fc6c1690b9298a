"""The ``minio`` link backend against a real S3 server: single-node Ceph radosgw on loopback.

radosgw verifies signatures, expiry and the signed Host, and keeps buckets private, so a 403 here
means what it would mean in production. Links are fetched with plain ``requests``, as Dify would.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from minio import Minio
from minio.error import S3Error

from bridge.objectstore import ObjectStore, ObjectStoreError, S3Config, job_key, job_prefix
from tests.bridge_fixtures import free_port
from tests.s3_fixture import S3Server, run_radosgw

BUCKET = "bridge-test"
JOB_A, JOB_B = "a" * 32, "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with run_radosgw(tmp_path_factory.mktemp("radosgw")) as server:
        print(f"radosgw ready in {server.start_s:.2f} s")
        yield server


def config(s3: S3Server, **changes: Any) -> S3Config:
    return replace(S3Config(s3.endpoint, s3.access_key, s3.secret_key, BUCKET, secure=False), **changes)


@pytest.fixture(scope="module")
def store(s3: S3Server) -> ObjectStore:
    store = ObjectStore(config(s3))
    store.ensure_bucket()
    return store


@pytest.fixture(scope="module")
def video(store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """A 6 MiB 'video', so the upload goes through multipart (5 MiB parts)."""
    data = os.urandom(6 * 1024 * 1024)
    path = tmp_path_factory.mktemp("video") / "video.mp4"
    path.write_bytes(data)
    key = job_key(JOB_A, "video.mp4")
    store.upload(key, path, "video/mp4")
    return key, data


def put(store: ObjectStore, tmp_path: Path, key: str, data: bytes, content_type: str) -> None:
    path = tmp_path / key.replace("/", "_")
    path.write_bytes(data)
    store.upload(key, path, content_type)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_link_downloads_the_object(store: ObjectStore, video: tuple[str, bytes], s3: S3Server) -> None:
    key, data = video
    url, expires_at = store.presign(key, ttl_s=600, download_name="talking-head.mp4", content_type="video/mp4")
    assert abs(expires_at - (time.time() + 600)) < 2
    assert s3.secret_key not in url and urlsplit(url).netloc == s3.endpoint
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Content-Disposition"] == 'attachment; filename="talking-head.mp4"'
    assert response.headers["Content-Type"] == "video/mp4"


def test_link_without_overrides_serves_the_stored_type(store: ObjectStore, tmp_path: Path) -> None:
    key = job_key(JOB_A, "subtitles.vtt")
    put(store, tmp_path, key, b"WEBVTT\n", "text/vtt")
    response = requests.get(store.presign(key, ttl_s=60)[0], timeout=10)
    assert response.status_code == 200 and response.content == b"WEBVTT\n"
    assert response.headers["Content-Type"] == "text/vtt"
    assert "Content-Disposition" not in response.headers


def _flip_signature(url: str) -> str:
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    return with_query(url, **{"X-Amz-Signature": signature[:-1] + ("0" if signature[-1] != "0" else "1")})


TAMPERINGS: dict[str, Callable[[str], str]] = {
    "signature": _flip_signature,
    "key": lambda url: url.replace("/video.mp4?", "/poster.jpg?"),  # an object that exists
    "filename": lambda url: with_query(url, **{"response-content-disposition": 'attachment; filename="x.exe"'}),
    "expiry": lambda url: with_query(url, **{"X-Amz-Expires": "604800"}),
    "host": lambda url: url.replace("://127.0.0.1:", "://localhost:"),
}


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_tampered_link_is_refused(what: str, store: ObjectStore, video: tuple[str, bytes], tmp_path: Path) -> None:
    put(store, tmp_path, job_key(JOB_A, "poster.jpg"), b"\xff\xd8poster", "image/jpeg")
    url, _ = store.presign(video[0], ttl_s=600, download_name="talking-head.mp4")
    tampered = TAMPERINGS[what](url)
    assert tampered != url
    assert requests.get(tampered, timeout=10).status_code == 403


def test_expired_link_is_refused(store: ObjectStore, tmp_path: Path) -> None:
    key = job_key(JOB_A, "subtitles.srt")
    put(store, tmp_path, key, b"1\n", "application/x-subrip")
    url, expires_at = store.presign(key, ttl_s=2)
    assert requests.get(url, timeout=10).status_code == 200
    time.sleep(max(expires_at - time.time(), 0) + 1.1)
    assert requests.get(url, timeout=10).status_code == 403


def test_unsigned_get_is_refused(s3: S3Server, video: tuple[str, bytes]) -> None:
    """The bucket is private: no anonymous read of an object, nor a listing."""
    assert requests.get(f"http://{s3.endpoint}/{BUCKET}/{video[0]}", timeout=10).status_code == 403
    assert requests.get(f"http://{s3.endpoint}/{BUCKET}", timeout=10).status_code == 403
    raw = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False, region="us-east-1")
    with pytest.raises(S3Error) as info:
        raw.get_bucket_policy(BUCKET)
    assert info.value.code == "NoSuchBucketPolicy"


def test_presign_for_an_unreachable_public_host_makes_no_network_call(
        s3: S3Server, store: ObjectStore, video: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    public = ObjectStore(config(s3, public_endpoint="downloads.invalid:443", public_secure=True))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("presign touched the network")

    with monkeypatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", no_network)
        patch.setattr(socket, "create_connection", no_network)
        patch.setattr(socket.socket, "connect", no_network)
        started = time.monotonic()
        url, _ = public.presign(video[0], ttl_s=600, download_name="talking-head.mp4")
        assert time.monotonic() - started < 0.5
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "downloads.invalid", f"/{BUCKET}/{video[0]}")
    # Behind a reverse proxy that passes Host through, the link verifies; the internal client's does not.
    internal = urlunsplit(("http", s3.endpoint, parts.path, parts.query, ""))
    response = requests.get(internal, headers={"Host": "downloads.invalid"}, timeout=10)
    assert response.status_code == 200 and response.content == video[1]
    assert requests.get(internal, timeout=10).status_code == 403


def test_ping(s3: S3Server, store: ObjectStore) -> None:
    assert store.ping() is None
    closed = ObjectStore(config(s3, endpoint=f"127.0.0.1:{free_port()}"))
    started = time.monotonic()
    reason = closed.ping()
    assert reason is not None and "refused" in reason.lower()
    assert time.monotonic() - started < 1
    assert ObjectStore(config(s3, bucket="no-such-bucket")).ping() == "bucket no-such-bucket does not exist"
    wrong = ObjectStore(config(s3, secret_key="not-the-secret")).ping()
    assert wrong is not None and "not-the-secret" not in wrong and s3.secret_key not in wrong


def test_ping_of_a_server_that_never_answers_is_bounded(s3: S3Server) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never reads or answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        mute = ObjectStore(config(s3, endpoint=f"127.0.0.1:{listener.getsockname()[1]}"))
        started = time.monotonic()
        assert mute.ping() is not None
        assert time.monotonic() - started < 5


def test_errors_name_the_step_and_carry_no_secret(s3: S3Server, tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"x")
    key = job_key(JOB_B, "video.mp4")
    for store, cause in ((ObjectStore(config(s3, endpoint=f"127.0.0.1:{free_port()}")), "refused"),
                         (ObjectStore(config(s3, bucket="no-such-bucket")), "NoSuchBucket")):
        with pytest.raises(ObjectStoreError) as info:
            store.upload(key, path, "video/mp4")
        assert str(info.value).startswith(f"uploading {key} at ") and cause in str(info.value)
        assert s3.secret_key not in str(info.value)
    assert s3.secret_key not in repr(config(s3))


def test_delete_prefix(store: ObjectStore, s3: S3Server, tmp_path: Path) -> None:
    for job_id in (JOB_A, JOB_B):
        put(store, tmp_path, job_key(job_id, "poster.jpg"), job_id.encode(), "image/jpeg")
    url, _ = store.presign(job_key(JOB_B, "poster.jpg"), ttl_s=60)
    assert store.delete_prefix(job_prefix(JOB_B)) == 1
    assert store.delete_prefix(job_prefix(JOB_B)) == 0
    raw = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False, region="us-east-1")
    assert [o.object_name for o in raw.list_objects(BUCKET, prefix=job_prefix(JOB_B), recursive=True)] == []
    assert requests.get(url, timeout=10).status_code == 404
    assert raw.stat_object(BUCKET, job_key(JOB_A, "poster.jpg")).size == 32  # the other job is untouched
    put(store, tmp_path, job_key(JOB_B, "video.mp4"), b"v", "video/mp4")
    put(store, tmp_path, job_key(JOB_B, "subtitles.vtt"), b"s", "text/vtt")
    assert store.delete_prefix(job_prefix(JOB_B)) == 2


def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    store.ensure_bucket()
    assert store.ping() is None


BAD_KEYS = ["", "jobs/", f"jobs/{JOB_A}/", f"jobs/{JOB_A}/evil.sh", f"jobs/{JOB_A.upper()}/video.mp4",
            f"jobs/{JOB_A}/../{JOB_B}/video.mp4", f"/jobs/{JOB_A}/video.mp4", f"jobs/{JOB_A}/video.mp4/",
            f"jobs/{JOB_A}/outputs/video.mp4", f"jobs/{JOB_A}/video.mp4\n", f"avatars/{JOB_A}/video.mp4",
            "../../etc/passwd", f"jobs/{JOB_A[:-1]}/video.mp4"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(key: str, store: ObjectStore, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        store.presign(key, ttl_s=60)
    with pytest.raises(ValueError):
        store.upload(key, path, "video/mp4")


@pytest.mark.parametrize("prefix", ["", "/", "jobs", "jobs/", f"jobs/{JOB_A}", f"jobs/{JOB_A}/video.mp4",
                                    f"jobs/{JOB_A}//", "jobs/*/"])
def test_bad_prefixes_are_refused(prefix: str, store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.delete_prefix(prefix)


def test_bad_link_options_are_refused(store: ObjectStore, video: tuple[str, bytes]) -> None:
    for name in ['a"b.mp4', "a\r\nSet-Cookie: x", "../x.mp4", "", "vidéo.mp4", "a;b.mp4"]:
        with pytest.raises(ValueError):
            store.presign(video[0], ttl_s=60, download_name=name)
    for ttl_s in (0, -1, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError):
            store.presign(video[0], ttl_s=ttl_s)
    with pytest.raises(ValueError):
        store.presign(video[0], ttl_s=60, content_type="text/html\r\nX: y")
    with pytest.raises(ValueError):
        job_key(JOB_A, "../../x")
    with pytest.raises(ValueError):
        job_prefix("not-a-job")


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "127.0.0.1:9000/path", "", "user@host:1"])
def test_config_refuses_urls(endpoint: str) -> None:
    with pytest.raises(ValueError):
        S3Config(endpoint=endpoint, access_key="k", secret_key="s", bucket=BUCKET)
