"""ComfyUI's /ws event stream, read with a minimal RFC 6455 client (the test venv has no websocket library):
what the browser sees, so a test can act when a node is observably executing instead of guessing a delay."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


class Events:
    """JSON messages from one ComfyUI websocket connection (binary preview frames are skipped)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("ComfyUI closed the websocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def next_message(self) -> dict | None:
        """The next text message, or None for a frame that is not one (binary, ping, pong)."""
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._read(8))[0]
        payload = self._read(length)
        opcode = first & 0x0F
        if opcode == 8:
            raise ConnectionError("ComfyUI closed the websocket")
        return json.loads(payload) if opcode == 1 else None

    def wait_for(self, matches: Callable[[dict], bool], timeout_s: float) -> dict:
        """The first message ``matches`` accepts; fails after ``timeout_s`` with the last messages seen."""
        deadline = time.monotonic() + timeout_s
        seen: list[dict] = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                message = self.next_message()
            except TimeoutError:
                break
            if message is None:
                continue
            if matches(message):
                return message
            seen = [*seen[-9:], message]
        raise AssertionError(f"no matching websocket message in {timeout_s} s; last seen: {seen}")


@contextmanager
def events(url: str, client_id: str) -> Iterator[Events]:
    """A websocket to ComfyUI's /ws as ``client_id``: it receives the progress of prompts queued with that id."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection((host, port), timeout=30)
    try:
        sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        stream = Events(sock)
        while b"\r\n\r\n" not in stream.buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("ComfyUI closed the websocket during the handshake")
            stream.buffer += chunk
        head, stream.buffer = stream.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        yield stream
    finally:
        sock.close()
