"""Issue #10 through the API: media that lies about its length, or cannot hold a face, is a 422 at submit.

A real redis-server and worker, the API through Flask's test client; the hostile files are built by
tests/hostile_media.py and also served over plain HTTP from loopback (allow-listed) for the URL fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.storage import Storage
from tests.bridge_fixtures import Bridge, Receiver, RedisServer, bridge_with_worker, run_receiver
from tests.hostile_media import lying_mkv, lying_mp3, many_channel_wav, one_pixel_video
from tests.test_bridge_api import PHOTO, problem_of, upload

AVATAR_SCOPES = ["jobs:read", "jobs:write", "avatars:write"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    lying_mp3(d / "hour.mp3")
    lying_mkv(d / "me.mkv")
    one_pixel_video(d / "dot.mp4")
    for channels in (64, 65):
        many_channel_wav(d / f"{channels}ch.wav", channels)
    return d


@pytest.fixture(scope="module")
def receiver(hostile: Path) -> Iterator[Receiver]:
    with run_receiver(hostile) as running:
        yield running


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, storage: Path,
           receiver: Receiver) -> Iterator[Bridge]:
    with bridge_with_worker(tmp_path_factory.mktemp("bridge"), redis_server.url, storage,
                            fetch_allow_http_hosts=[f"127.0.0.1:{receiver.port}"]) as running:
        yield running


def refused_cleanly(bridge: Bridge, response: Any, sub: str, field: str, code: str, reason: str) -> None:
    """A 422 with ``code`` whose message says ``reason`` in plain words, and nothing left: no job, no avatar row,
    no scratch file."""
    body = problem_of(response, 422, field)
    assert body["code"] == code, body
    assert reason in body["detail"], body
    assert not re.search(r"0x[0-9a-fA-F]{6,}|/tmp/|media-check-", body["detail"]), body
    assert bridge.client.get("/v1/jobs?limit=100", headers=bridge.auth(sub)).get_json()["jobs"] == []
    avatars = bridge.client.get("/v1/avatars", headers=bridge.auth(sub)).get_json()["avatars"]
    assert all(a["shared"] for a in avatars), avatars  # only the shared samples
    assert list(Storage(bridge.settings.storage_root).scratch().iterdir()) == []


def test_an_hour_of_mp3_claiming_16_frames_is_too_long(bridge: Bridge, hostile: Path) -> None:
    response = upload(bridge, hostile / "hour.mp3", "talk.mp3", sub="tenant-mp3", avatar_id=PHOTO)
    refused_cleanly(bridge, response, "tenant-mp3", "audio", "media_too_long",
                    "talk.mp3 holds more than 300 s of media, although its header says 0.4 s; the limit is 300 s")


def test_the_same_mp3_by_url_is_too_long(bridge: Bridge, receiver: Receiver) -> None:
    response = bridge.submit({"audio_url": f"{receiver.base}/hour.mp3", "avatar_id": PHOTO}, sub="tenant-url")
    refused_cleanly(bridge, response, "tenant-url", "audio_url", "media_too_long", "holds more than 300 s of media")


def test_an_mkv_of_400_s_claiming_1_s_is_no_avatar(bridge: Bridge, hostile: Path, receiver: Receiver) -> None:
    response = bridge.client.post("/v1/avatars", headers=bridge.auth("tenant-mkv", AVATAR_SCOPES),
                                  content_type="multipart/form-data",
                                  data={"name": "Long", "file": ((hostile / "me.mkv").open("rb"), "me.mkv")})
    refused_cleanly(bridge, response, "tenant-mkv", "file", "media_too_long",
                    "me.mkv holds more than 300 s of media, although its header says 1.0 s")
    response = bridge.client.post("/v1/avatars", headers=bridge.auth("tenant-mkv", AVATAR_SCOPES),
                                  json={"url": f"{receiver.base}/me.mkv"})
    refused_cleanly(bridge, response, "tenant-mkv", "url", "media_too_long", "holds more than 300 s of media")


def test_a_1x1_video_is_refused_in_plain_words(bridge: Bridge, hostile: Path) -> None:
    response = bridge.client.post("/v1/avatars", headers=bridge.auth("tenant-dot", AVATAR_SCOPES),
                                  content_type="multipart/form-data",
                                  data={"file": ((hostile / "dot.mp4").open("rb"), "dot.mp4")})
    refused_cleanly(bridge, response, "tenant-dot", "file", "unsupported_media",
                    "dot.mp4 is only 1x1 pixels; a face needs a picture at least 40 pixels wide and tall")


def test_65_channels_are_refused_in_plain_words(bridge: Bridge, hostile: Path) -> None:
    response = upload(bridge, hostile / "65ch.wav", sub="tenant-65", avatar_id=PHOTO)
    refused_cleanly(bridge, response, "tenant-65", "audio", "unsupported_media",
                    "65ch.wav has 65 audio channels; at most 64 can be mixed down to mono")


def test_a_64_channel_wav_is_mixed_down_and_rendered(bridge: Bridge, hostile: Path) -> None:
    response = upload(bridge, hostile / "64ch.wav", avatar_id=PHOTO)
    assert response.status_code == 202, response.get_data(as_text=True)
    job = bridge.wait(response.get_json()["id"])
    assert job["status"] == "succeeded", job
    lead = bridge.engine_settings.lead_in_s + bridge.engine_settings.lead_out_s
    assert job["outputs"][0]["duration_s"] == pytest.approx(2.0 + lead, abs=0.1)
