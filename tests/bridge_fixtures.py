"""Helpers for bridge tests: a real, throwaway redis-server on a free loopback port, real workers, and
``Bridge``, the API app driven through Flask's test client with per-call tokens."""

from __future__ import annotations

import contextlib
import http.server
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from apiflask import APIFlask
from flask.testing import FlaskClient

from bridge.auth import mint_token
from bridge.keys import parse_api_key
from bridge.settings import BridgeSettings
from engine import EngineSettings
from tests.standins.render_gate import RenderGate

REPO = Path(__file__).resolve().parent.parent
AUD, ISS = "talking-head-bridge", "talking-head-dify-plugin"
RW = ["jobs:read", "jobs:write"]
POLL_TIMEOUT_S = 60.0
FINAL = frozenset({"succeeded", "failed", "canceled"})


@dataclass
class Bridge:
    app: APIFlask
    client: FlaskClient
    settings: BridgeSettings
    engine_settings: EngineSettings
    api_key: str

    @property
    def kid(self) -> str:
        """The id of ``api_key``: with a sub, the owner of the jobs this bridge's tokens submit."""
        return parse_api_key(self.api_key)[0]

    def token(self, sub: str = "tenant-a", scopes: list[str] | None = None) -> str:
        return mint_token(self.api_key, sub, RW if scopes is None else scopes, AUD, ISS)

    def auth(self, sub: str = "tenant-a", scopes: list[str] | None = None, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, scopes)}", **headers}

    def submit(self, body: dict[str, Any], sub: str = "tenant-a", key: str | None = None) -> Any:
        headers = self.auth(sub, **({"Idempotency-Key": key} if key else {}))
        return self.client.post("/v1/jobs", json=body, headers=headers)

    def get(self, job_id: str, sub: str = "tenant-a") -> Any:
        return self.client.get(f"/v1/jobs/{job_id}", headers=self.auth(sub))

    def wait(self, job_id: str, sub: str = "tenant-a", timeout_s: float = POLL_TIMEOUT_S,
             until: frozenset[str] = FINAL) -> dict[str, Any]:
        """Poll until the job's status is in ``until`` (default: any final status)."""
        return poll_job(job_id, lambda: self.get(job_id, sub).get_json(), until, timeout_s=timeout_s)


def poll_job(job_id: str, fetch: Callable[[], dict[str, Any] | None], until: frozenset[str] = FINAL,
             stage: str | None = None, timeout_s: float = POLL_TIMEOUT_S, every_s: float = 0.1) -> dict[str, Any]:
    """Call ``fetch`` (the job's JSON, or None while the API cannot answer) until the status is in ``until``
    and, when given, the stage is ``stage``."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = fetch()
        if body is not None and body["status"] in until and (stage is None or body["stage"] == stage):
            return dict(body)
        seen = "no answer" if body is None else f"{body['status']}/{body['stage']}"
        assert time.monotonic() < deadline, f"job {job_id} still {seen} after {timeout_s} s, waiting for {until}"
        time.sleep(every_s)


def started_attempts(log: Path, job_id: str) -> list[int]:
    """Attempt numbers a worker started for the job, from its log."""
    return [int(n) for n in re.findall(rf"job {job_id} attempt (\d+) started", log.read_text(errors="replace"))]


def make_settings(root: Path, redis_url: str, **overrides: Any) -> BridgeSettings:
    values: dict[str, Any] = {"storage_root": root, "redis_url": redis_url, "min_free_bytes": 0,
                              "database_url": f"sqlite:///{root / 'bridge.db'}", **overrides}
    return BridgeSettings(_env_file=None, **values)


def settings_env(**overrides: Any) -> dict[str, str]:
    """``BRIDGE_*`` variables for settings overrides (lists comma-joined), for a subprocess."""
    return {f"BRIDGE_{key.upper()}": ",".join(value) if isinstance(value, list) else str(value)
            for key, value in overrides.items()}


@contextlib.contextmanager
def bridge_with_worker(root: Path, redis_url: str, engine_root: Path, log_dir: Path | None = None,
                       gate: RenderGate | None = None, **overrides: Any) -> Iterator[Bridge]:
    """The API in-process (test client) and one real worker subprocess, sharing settings, table and storage.

    With ``gate``, the worker is tests/standins/render_gate.py: its renders can be held mid-render."""
    from bridge.app import create_app
    from bridge.keys import KeyStore

    settings = make_settings(root, redis_url, **overrides)
    engine_settings = EngineSettings(_env_file=None, storage_root=engine_root)  # type: ignore[call-arg]
    app = create_app(settings, engine_settings=engine_settings)  # creates the tables before the worker starts
    api_key = KeyStore(settings.keys_path).create()
    log = (log_dir or root) / "worker.log"
    env = worker_env(settings, engine_root, **settings_env(**overrides), **(gate.env if gate else {}))
    with run_bridge_worker(env, log, REPO, module="tests.standins.render_gate" if gate else "bridge"):
        yield Bridge(app, app.test_client(), settings, engine_settings, api_key)


@dataclass(frozen=True)
class ServedBridge:
    base: str
    settings: BridgeSettings
    env: dict[str, str]
    """The worker's environment (and the server's, less its address)."""
    gate: RenderGate
    """Holds the worker's renders at lip-sync while armed."""


@contextlib.contextmanager
def served_bridge(root: Path, redis_url: str, engine_root: Path, **overrides: Any) -> Iterator[ServedBridge]:
    """The bridge as a client on the network meets it: ``python -m bridge serve`` (gunicorn) and one worker
    (tests/standins/render_gate.py, so a render can be held), sharing settings, table and storage."""
    from bridge.app import create_app

    settings = make_settings(root, redis_url, **overrides)
    create_app(settings)  # the tables, before the worker starts
    env = worker_env(settings, engine_root, **settings_env(**overrides))
    gate = RenderGate(root / "gate")
    with run_bridge_worker({**env, **gate.env}, root / "worker.log", REPO, module="tests.standins.render_gate"), \
            run_bridge_serve(env, root / "serve.log") as base:
        yield ServedBridge(base, settings, env, gate)


def worker_env(settings: BridgeSettings, engine_root: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess sharing ``settings``' Redis, table and storage."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}  # no stray broker or queue
    return {**inherited, "BRIDGE_REDIS_URL": settings.redis_url, "BRIDGE_STORAGE_ROOT": str(settings.storage_root),
            "BRIDGE_DATABASE_URL": settings.database, "BRIDGE_QUEUE": settings.queue,
            "ENGINE_STORAGE_ROOT": str(engine_root), **extra}


def listening_trap() -> socket.socket:
    """A listening loopback socket that nothing may connect to; ``was_connected`` tells if something did."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def was_connected(trap: socket.socket, wait_s: float = 0.3) -> bool:
    """Whether a connection is waiting in the trap's accept queue."""
    return bool(select.select([trap], [], [], wait_s)[0])


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
def run_redis_server(
    workdir: Path, timeout_s: float = 10.0, *, port: int | None = None, appendonly: bool = False,
) -> Iterator[RedisServer]:
    """Start ``redis-server`` (no persistence unless ``appendonly``), wait for PING, and stop it on exit.

    With ``appendonly`` and the same ``workdir`` and ``port``, a second start is a restart that keeps the queue.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server is not installed (make setup installs Debian's redis-server)")
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
    process = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence, "--dir", str(workdir)],
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
def run_bridge_worker(
    env: dict[str, str], log: Path, cwd: Path, timeout_s: float = 60.0, module: str = "bridge",
    prefix: Sequence[str] = (),
) -> Iterator[BridgeWorker]:
    """Start ``python -m <module> worker`` in its own process group; wait for 'ready', kill the group on exit.

    ``prefix`` runs it elsewhere (another host's namespace); it must exec the worker, not fork it.
    """
    with log.open("wb") as out:
        process = subprocess.Popen([*prefix, sys.executable, "-m", module, "worker"], cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while b" ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge worker did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)
        yield BridgeWorker(process, log)
    finally:
        stop_group(process)


def worker_children(worker: BridgeWorker) -> list[int]:
    """Pids of the worker's prefork children (the processes that render)."""
    out = subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True, check=False)
    return [int(pid) for pid in out.stdout.split()]


def kill_hard(worker: BridgeWorker) -> None:
    """``kill -9`` the whole worker (main process and children), as when its host loses power."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)


def stop_group(process: subprocess.Popen[bytes]) -> None:
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


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now (refused, or accepted while gunicorn's workers boot, is False)."""
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def run_bridge_serve(
    env: dict[str, str], log: Path, timeout_s: float = 60.0, port: int | None = None, *, host: str = "127.0.0.1",
    prefix: Sequence[str] = (), probe: Callable[[str], bool] = answers,
) -> Iterator[str]:
    """``python -m bridge serve`` (gunicorn) on ``host:port`` (default: a free loopback port); yields its base URL
    once /livez answers. ``prefix`` and ``probe`` run it on, and ask it from, another host (tests/netns.py)."""
    port = port or free_port()
    env = {**env, "BRIDGE_PORT": str(port), "BRIDGE_HOST": host}
    with log.open("wb") as out:
        process = subprocess.Popen([*prefix, sys.executable, "-m", "bridge", "serve"], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not probe(f"{base}/livez"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bridge serve did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)
        yield base
    finally:
        stop_group(process)


@dataclass
class Receiver:
    """A plain-HTTP server on loopback (allow-listed for the bridge): serves files, records callbacks."""

    root: Path
    port: int = 0
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hook_statuses: queue.Queue[int] = field(default_factory=queue.Queue)
    trap: socket.socket | None = None
    """A listening socket nothing may connect to (the target of a redirect to loopback)."""

    @property
    def trap_port(self) -> int:
        assert self.trap is not None
        return int(self.trap.getsockname()[1])

    def trap_was_hit(self) -> bool:
        assert self.trap is not None
        return was_connected(self.trap)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_receiver(root: Path) -> Iterator[Receiver]:
    trap = listening_trap()
    receiver = Receiver(root, trap=trap)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return None

        def do_GET(self) -> None:
            if self.path == "/to-loopback":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{receiver.trap_port}/secret")
                self.end_headers()
                return
            path = receiver.root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.hooks.append(({k: v for k, v in self.headers.items()}, body))
            status = 200 if receiver.hook_statuses.empty() else receiver.hook_statuses.get()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        trap.close()

class TcpProxy:
    """A loopback TCP relay that can be switched off and on: a network outage between two real parts."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        if listener is not None:
            listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
