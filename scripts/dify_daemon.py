"""A stand-in for Dify's plugin daemon: starts the plugin (`python -m main`) and speaks its stdio protocol.

What the daemon does, as recorded in shared/notes/dify-plugin.md §4: it starts the plugin in its own
directory with INSTALL_METHOD=local, waits for the first heartbeat, writes one JSON request per line to
stdin, and reads JSON objects from stdout (each followed by a blank line), routing ``session`` events
by ``session_id`` until ``end``. Tests and `make demo` drive the plugin through this class exactly so.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PLUGIN_PYTHON = REPO / ".venv-plugin" / "bin" / "python"


@dataclass
class Reply:
    """Everything one request got back: stream messages (blob chunks already joined), or an error."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    blobs: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    heartbeats_during: list[float] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def variables(self) -> dict[str, Any]:
        return {m["message"]["variable_name"]: m["message"]["variable_value"] for m in self.of_type("variable")}

    @property
    def texts(self) -> list[str]:
        return [m["message"]["text"] for m in self.of_type("text")]

    @property
    def links(self) -> list[str]:
        return [m["message"]["text"] for m in self.of_type("link")]

    @property
    def jsons(self) -> list[Any]:
        return [m["message"]["json_object"] for m in self.of_type("json")]

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [m["message"] for m in self.of_type("log")]


class PluginProcess:
    def __init__(self, plugin_dir: Path = REPO, python: Path = PLUGIN_PYTHON, heartbeat_s: float = 0.5,
                 env: Mapping[str, str] | None = None) -> None:
        self.plugin_dir = plugin_dir
        self._env = {"PATH": os.environ.get("PATH", ""), "INSTALL_METHOD": "local",
                     "HEARTBEAT_INTERVAL": str(heartbeat_s), **(env or {})}
        self._python = python
        self._sessions: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.heartbeats: list[float] = []
        self.logs: list[dict[str, Any]] = []
        self.startup: list[dict[str, Any]] = []
        """Every JSON object printed up to and including the first heartbeat (the manifest comes first)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._ready = threading.Event()
        # A file, not a pipe: nobody reads it until something fails. Closed by stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115

    def __enter__(self) -> PluginProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        self.process = subprocess.Popen([str(self._python), "-m", "main"], cwd=self.plugin_dir, env=self._env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s):
            said = self.stderr()[-5000:]
            self.stop()
            raise RuntimeError(f"the plugin sent no heartbeat in {timeout_s:.0f} s: it did not start.\n"
                               f"printed: {self.startup}\nstderr:\n{said}")

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        self._stderr.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if not self._ready.is_set():
                self.startup.append(event)
            if kind == "heartbeat":
                self.heartbeats.append(time.monotonic())
                self._ready.set()
            elif kind == "log":
                self.logs.append(event.get("data") or {})
            elif kind == "session":
                with self._lock:
                    box = self._sessions.get(str(event.get("session_id")))
                if box is not None:
                    box.put(event["data"])

    def request(self, data: dict[str, Any], timeout_s: float = 600.0) -> Reply:
        """Send one request and collect its session until ``end``."""
        assert self.process is not None and self.process.stdin is not None
        session_id = str(uuid.uuid4())
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._sessions[session_id] = box
        line = {"session_id": session_id, "conversation_id": None, "message_id": None, "app_id": None,
                "endpoint_id": None, "context": {}, "event": "request", "data": data}
        started = time.monotonic()
        self.process.stdin.write((json.dumps(line) + "\n").encode())
        self.process.stdin.flush()
        reply = Reply()
        chunks: dict[str, list[bytes]] = {}
        try:
            for item in self._drain(box, started + timeout_s):
                if item["type"] == "error":
                    reply.error = item["data"]
                    continue
                message = item["data"]
                if message.get("type") == "blob_chunk":
                    chunk = message["message"]
                    chunks.setdefault(chunk["id"], []).append(base64.b64decode(chunk["blob"]))
                    if chunk.get("end"):
                        reply.blobs.append((b"".join(chunks.pop(chunk["id"])), message.get("meta") or {}))
                    continue
                reply.messages.append(message)
        finally:
            with self._lock:
                self._sessions.pop(session_id, None)
        reply.heartbeats_during = [t for t in self.heartbeats if t >= started]
        return reply

    @staticmethod
    def _drain(box: queue.Queue[dict[str, Any]], deadline: float) -> Iterator[dict[str, Any]]:
        while True:
            try:
                item = box.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("the plugin did not end the session in time") from None
            if item["type"] == "end":
                return
            yield item

    # --- the requests Dify sends -----------------------------------------------------------------

    def validate(self, credentials: Mapping[str, str], provider: str = "talking_head") -> Reply:
        return self.request({"user_id": "dify-admin", "type": "tool", "action": "validate_tool_credentials",
                             "provider": provider, "credentials": dict(credentials)}, timeout_s=60)

    def invoke(self, tool: str, parameters: Mapping[str, Any], credentials: Mapping[str, str],
               user_id: str = "dify-user-1", provider: str = "talking_head", timeout_s: float = 600.0) -> Reply:
        return self.request({"user_id": user_id, "type": "tool", "action": "invoke_tool", "provider": provider,
                             "tool": tool, "credentials": dict(credentials), "credential_type": "api-key",
                             "tool_parameters": dict(parameters)}, timeout_s)

    def options(self, tool: str, parameter: str, credentials: Mapping[str, str],
                provider: str = "talking_head") -> Reply:
        return self.request({"user_id": "dify-user-1", "type": "dynamic_parameter",
                             "action": "fetch_parameter_options", "provider": provider, "provider_action": tool,
                             "parameter": parameter, "credentials": dict(credentials),
                             "credential_type": "api-key"}, timeout_s=60)


def dify_file(url: str, filename: str, mime_type: str, kind: str = "document", size: int = 0) -> dict[str, Any]:
    """A file parameter as Dify sends it to a plugin."""
    return {"dify_model_identity": "__dify__file__", "url": url, "mime_type": mime_type, "type": kind,
            "filename": filename, "extension": Path(filename).suffix, "size": size}
