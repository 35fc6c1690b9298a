"""Helpers for bridge tests: a real, throwaway redis-server on a free loopback port, and a real worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    """A loopback port nobody listens on right now (also used as a 'closed port' for failure tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def run_redis_server(workdir: Path, timeout_s: float = 10.0) -> Iterator[RedisServer]:
    """Start ``redis-server`` with no persistence, wait for PING, and kill it on exit."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server is not installed (make setup installs Debian's redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING on port {port}") from None
                time.sleep(0.05)
        client.close()
        yield RedisServer(port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class BridgeWorker:
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def run_bridge_worker(env: dict[str, str], log: Path, cwd: Path, timeout_s: float = 60.0) -> Iterator[BridgeWorker]:
    """Start ``python -m bridge worker`` in its own process group; wait for 'ready', kill the group on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bridge", "worker"], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while b" ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge worker did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)
        yield BridgeWorker(process, log)
    finally:
        _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's whole group (main process and prefork child), then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the prefork child may outlive its parent
