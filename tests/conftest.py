"""Shared fixtures: a storage root with the sample avatars, an engine, a Redis server, ffprobe helpers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import pytest
from skimage import data as skdata

from engine import Engine, EngineSettings
from engine.samples import PHOTO_ID, VIDEO_ID, ensure_samples
from engine.video import ffmpeg_exe
from tests.bridge_fixtures import RedisServer, listening_trap, run_redis_server
from tests.pg_fixture import PostgresServer, run_postgres

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private storage root holding the sample avatars (copied from ``make setup``'s, or built)."""
    root = tmp_path_factory.mktemp("storage")
    built = REPO / "var" / "avatars"
    for avatar_id in (PHOTO_ID, VIDEO_ID):
        if (built / avatar_id / "meta.json").is_file():
            shutil.copytree(built / avatar_id, root / "avatars" / avatar_id)
    ensure_samples(EngineSettings(storage_root=root))
    return root


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket that nothing may connect to (check with ``bridge_fixtures.was_connected``)."""
    sock = listening_trap()
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server per test module (bridge tests)."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server on loopback for the session; tests take a fresh database each (``create_database``)."""
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def job_table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job table's URL, once per backend for the module: a SQLite file (one host's default), or a fresh
    database on the session's PostgreSQL server (what API and workers on several hosts share)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'jobs.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"jobs_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def settings(storage: Path) -> EngineSettings:
    return EngineSettings(storage_root=storage)


@pytest.fixture(scope="session")
def engine(settings: EngineSettings) -> Engine:
    return Engine(settings)


@pytest.fixture(scope="session")
def sample_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small media files made with ffmpeg: good speech, and the bad kinds users send."""
    d = tmp_path_factory.mktemp("files")
    sine = ("-f", "lavfi", "-i", "sine=frequency=220:duration=2")
    ffmpeg(*sine, str(d / "speech.wav"))
    ffmpeg(*sine, "-c:a", "libmp3lame", str(d / "speech.mp3"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=700", "-ar", "8000", str(d / "long.wav"))
    clip = ("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p")
    ffmpeg(*clip, str(d / "clip.mp4"))
    data = (d / "clip.mp4").read_bytes()
    (d / "half.mp4").write_bytes(data[: len(data) // 2])
    shutil.copy(d / "speech.wav", d / "speech-named.mp4")
    (d / "notes.txt").write_text("not a recording\n" * 50)
    (d / "list.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
                                 "http://127.0.0.1:9/segment.ts\n#EXT-X-ENDLIST\n")
    iio.imwrite(d / "face.png", skdata.astronaut())
    return d


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True, check=True, timeout=30)
    return json.loads(out.stdout)


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-v", "error", *args], check=True, timeout=120)


def top_level_boxes(path: Path) -> list[str]:
    """Names of the top-level MP4 boxes, in file order (to check moov comes before mdat)."""
    names, data, pos = [], path.read_bytes(), 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        names.append(data[pos + 4:pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8:
            break
        pos += size
    return names
