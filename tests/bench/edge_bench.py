"""Hostile bodies (issue #10, section 4): what they cost the API, measured on the production server.

1. Memory: the API's resident memory (gunicorn master and workers, summed) while several clients stream large
   chunked bodies at it as fast as loopback allows, without a token (3 × 128 MiB, 8 × 190 MiB) and with a valid
   one (3 × 128 MiB of JSON, refused past BRIDGE_MAX_JSON_LENGTH). Peak and settled growth over the idle API.
2. Liveness: GET /livez round trips (p50, p99, max; a 10 s client timeout counts as 10 s) on an idle API, then
   while 20 clients keep a slow body open each, one byte every 3 s, opening a new one whenever the bridge ends
   theirs: without a token, then with valid tokens on an API whose BRIDGE_BODY_TIMEOUT_S is 10 s.

Run: ``.venv/bin/python tests/bench/edge_bench.py``. Everything runs on loopback: redis-server and
``python -m bridge serve`` (gunicorn gthread, 2 processes × 8 threads, the default settings otherwise).
EDGE_BENCH_PHASES (comma-separated, default ``memory,livez``) runs a subset.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bridge.auth import mint_token  # noqa: E402
from bridge.keys import KeyStore  # noqa: E402
from bridge.settings import BridgeSettings  # noqa: E402
from tests.bridge_fixtures import make_settings, run_bridge_serve, run_redis_server, worker_env  # noqa: E402

MIB = 1024 * 1024
AUD, ISS = BridgeSettings.model_fields["jwt_audience"].default, BridgeSettings.model_fields["jwt_issuer"].default
SLOW_BODIES = 20
SLOW_EVERY_S = 3.0
LIVEZ_WINDOW_S = 15.0
LIVEZ_TIMEOUT_S = 10.0
AUTH_BODY_TIMEOUT_S = 10


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def api(root: Path, redis_url: str, **env: str) -> Iterator[tuple[str, str]]:
    """``python -m bridge serve`` on a fresh storage root: its base URL and an API key."""
    settings = make_settings(root, redis_url)
    key = KeyStore(settings.keys_path).create()
    with run_bridge_serve(worker_env(settings, root / "engine", BRIDGE_MIN_FREE_BYTES="0", **env),
                          root / "serve.log") as base:
        yield base, key


def api_rss_mb() -> float:
    """Resident memory of every ``bridge serve`` process under this one (looked up each time: workers recycle)."""
    total = 0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            if "bridge" in cmdline and "serve" in cmdline:
                total += proc.memory_info().rss + sum(child.memory_info().rss for child in proc.children())
    return total / 1e6


def head(base: str, token: str | None, content_type: str = "application/json") -> socket.socket:
    """A connection with a chunked POST /v1/jobs started: request line and headers, no body yet."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    lines = ["POST /v1/jobs HTTP/1.1", f"Host: {url.netloc}", f"Content-Type: {content_type}",
             "Transfer-Encoding: chunked", *([f"Authorization: Bearer {token}"] if token else [])]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def stream(base: str, token: str | None, size: int) -> tuple[int, str]:
    """Send a ``size``-byte chunked body as fast as possible; bytes the bridge took, and its status line."""
    piece = f"{MIB:x}\r\n".encode() + b"a" * MIB + b"\r\n"
    sent = 0
    with head(base, token) as sock:
        with contextlib.suppress(OSError):
            while sent < size:
                sock.sendall(piece)
                sent += MIB
            sock.sendall(b"0\r\n\r\n")
        try:
            status = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        except OSError as exc:
            status = type(exc).__name__
    return sent, status


def memory(base: str, key: str, label: str, clients: int, size: int, with_token: bool) -> None:
    idle = api_rss_mb()
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, api_rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    tokens = [mint_token(key, "bench", ["jobs:write"], AUD, ISS) if with_token else None for _ in range(clients)]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda token: stream(base, token, size), tokens))
    time.sleep(1.0)
    done.set()
    sampler.join()
    settled = api_rss_mb()
    taken = max(sent for sent, _ in results) / MIB
    statuses = sorted({status for _, status in results})
    print(f"{label:<44} idle {idle:6.0f} MB  peak +{peak - idle:6.1f} MB  settled +{settled - idle:6.1f} MB  "
          f"(sent ≤ {taken:.0f} MiB each before the answer: {', '.join(statuses)})", flush=True)


def livez(base: str, label: str, attack: Callable[[threading.Event], None] | None = None) -> None:
    stop = threading.Event()
    attacker = threading.Thread(target=attack, args=(stop,)) if attack else None
    if attacker:
        attacker.start()
        time.sleep(SLOW_EVERY_S + 1)  # every slow body has been opened and has sent its first byte
    rounds: list[float] = []
    timeouts = 0
    deadline = time.monotonic() + LIVEZ_WINDOW_S
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            requests.get(f"{base}/livez", timeout=LIVEZ_TIMEOUT_S).raise_for_status()
            rounds.append(time.perf_counter() - start)
        except requests.RequestException:
            timeouts += 1
            rounds.append(LIVEZ_TIMEOUT_S)
        time.sleep(0.05)
    stop.set()
    if attacker:
        attacker.join()
    print(f"{label:<44} /livez p50 {pct(rounds, 50) * 1000:7.1f} ms  p99 {pct(rounds, 99) * 1000:7.1f} ms  "
          f"max {max(rounds) * 1000:7.1f} ms  ({len(rounds)} requests, {timeouts} timed out)", flush=True)


def slow_bodies(base: str, token: Callable[[], str | None]) -> Callable[[threading.Event], None]:
    """Keep SLOW_BODIES bodies open, one byte each every SLOW_EVERY_S; reopen any the bridge ends."""

    def attack(stop: threading.Event) -> None:
        socks = [head(base, token()) for _ in range(SLOW_BODIES)]
        while True:
            for index, sock in enumerate(socks):
                try:
                    sock.sendall(b"1\r\na\r\n")
                except OSError:
                    sock.close()
                    with contextlib.suppress(OSError):
                        socks[index] = head(base, token())
            if stop.wait(SLOW_EVERY_S):
                break
        for sock in socks:
            sock.close()

    return attack


def main() -> None:
    phases = os.environ.get("EDGE_BENCH_PHASES", "memory,livez").split(",")
    with tempfile.TemporaryDirectory() as tmp, run_redis_server(Path(tmp)) as redis_server:
        root = Path(tmp)
        with api(root / "a", redis_server.url) as (base, key):
            for _ in range(20):  # warm up: every worker has served a request
                requests.get(f"{base}/livez", timeout=10)
            if "memory" in phases:
                memory(base, key, "3 × 128 MiB chunked, no token", 3, 128 * MIB, with_token=False)
                memory(base, key, "8 × 190 MiB chunked, no token", 8, 190 * MIB, with_token=False)
                memory(base, key, "3 × 128 MiB chunked JSON, valid token", 3, 128 * MIB, with_token=True)
            if "livez" in phases:
                livez(base, "idle")
                livez(base, f"{SLOW_BODIES} slow bodies, no token", slow_bodies(base, lambda: None))
        if "livez" in phases:
            with api(root / "b", redis_server.url, BRIDGE_BODY_TIMEOUT_S=str(AUTH_BODY_TIMEOUT_S)) as (base, key):
                livez(base, f"{SLOW_BODIES} slow bodies, valid tokens, {AUTH_BODY_TIMEOUT_S} s deadline",
                      slow_bodies(base, lambda: mint_token(key, "bench", ["jobs:write"], AUD, ISS)))


if __name__ == "__main__":
    main()
