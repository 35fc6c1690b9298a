"""A real ComfyUI for the node-pack tests: started from $COMFYUI_DIR or the source snapshot, CPU only, on a
free port, with its own base directory (custom_nodes/ holding a link to comfyui/, input, output, temp, user)
and an in-memory database, so neither the checkout nor the user's ComfyUI is written to."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO.parent / "shared" / "vendor" / "comfyui-0.3.64-src.tar.gz"
UNPACKED = REPO / ".comfyui" / "ComfyUI"
VENV_PYTHON = REPO / ".venv-comfyui" / "bin" / "python"


def comfyui_home() -> Path | None:
    """ComfyUI's source folder, unpacking the snapshot as `make comfyui` does; None when there is none."""
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"])
    if not (UNPACKED / "main.py").is_file() and SNAPSHOT.is_file():
        with tarfile.open(SNAPSHOT) as tar:
            tar.extractall(UNPACKED.parent, filter="data")
    return UNPACKED if (UNPACKED / "main.py").is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyUI:
    url: str
    base: Path
    log: Path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def get_json(self, path: str) -> dict:
        return json.loads(self.get(path))

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise AssertionError(f"POST {path}: {err.code} {err.read().decode()[:2000]}") from err

    def queue(self, workflow: dict, client_id: str = "tests") -> str:
        return self.post("/prompt", {"prompt": workflow, "client_id": client_id})["prompt_id"]

    def refusal(self, workflow: dict) -> dict:
        """The error body of a POST /prompt that ComfyUI refuses (its validation), failing if it is queued."""
        request = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": workflow}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raise AssertionError(f"POST /prompt was accepted: {response.read().decode()[:500]}")
        except urllib.error.HTTPError as err:
            assert err.code == 400, err.code
            return json.loads(err.read())

    def wait(self, prompt_id: str, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] != "running":
                    return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout_s} s; log: {self.tail()}")

    def fetch(self, item: dict, out: Path) -> Path:
        query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
        out.write_bytes(self.get(f"/view?{query}"))
        return out

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def run_comfyui(home: Path, base: Path, env: dict[str, str]) -> Iterator[ComfyUI]:
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "talking_head").symlink_to(REPO / "comfyui", target_is_directory=True)
    for name in ("input", "output", "temp", "user", "models"):
        (base / name).mkdir(exist_ok=True)
    port = free_port()
    log = base / "comfyui.log"
    cmd = [str(VENV_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--user-directory", str(base / "user"),
           "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=home, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env})
    server = ComfyUI(f"http://127.0.0.1:{port}", base, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {process.returncode}: {server.tail()}")
            try:
                server.get("/system_stats")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not answer in 300 s: {server.tail()}") from None
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
