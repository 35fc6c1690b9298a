"""Hostile request bodies against the production server (`python -m bridge serve`: gunicorn gthread).

Raw sockets send what ``requests`` would not: headers that promise a body never sent, endless chunked bodies,
bodies trickled a byte at a time. The bridge must answer without needing the body when it can (401, a declared
length over the limit), refuse a body while it streams (413), stop waiting for one at the deadline (408), end
the connection instead of draining what it refused, and keep answering /livez meanwhile.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

from bridge.auth import mint_token
from bridge.keys import KeyStore
from tests.bridge_fixtures import AUD, ISS, RW, RedisServer, make_settings, run_bridge_serve, settings_env, worker_env

JSON_LIMIT = 64 * 1024  # the default BRIDGE_MAX_JSON_LENGTH
FIELD_LIMIT = 256 * 1024
UPLOAD_LIMIT = 1024 * 1024
BODY_TIMEOUT_S = 3
SLOW_BODIES = 20


@dataclass(frozen=True)
class Served:
    base: str
    api_key: str
    other_key: str

    def token(self) -> str:
        return mint_token(self.api_key, "tenant-a", RW, AUD, ISS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("bodies")
    settings = make_settings(root / "bridge", redis_server.url)
    keys = KeyStore(settings.keys_path)
    api_key, other_key = keys.create(), keys.create()
    env = worker_env(settings, root / "engine", **settings_env(
        max_content_length=UPLOAD_LIMIT, body_timeout_s=BODY_TIMEOUT_S, min_free_bytes=0))
    with run_bridge_serve(env, root / "serve.log") as base:
        yield Served(base, api_key, other_key)


def send_head(served: Served, headers: dict[str, str], path: str = "/v1/jobs") -> socket.socket:
    """Open a connection and send a POST's request line and headers, nothing of its body."""
    url = urlsplit(served.base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


@contextlib.contextmanager
def sending(sock: socket.socket, parts: Iterable[bytes], every_s: float = 0.0) -> Iterator[None]:
    """Send ``parts`` from a thread (every ``every_s`` seconds) until they run out, the server stops taking
    them, or the block ends; meanwhile the test reads the answer."""
    stop = threading.Event()

    def run() -> None:
        for part in parts:
            if stop.is_set():
                return
            try:
                sock.sendall(part)
            except OSError:
                return
            stop.wait(every_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def answer(sock: socket.socket) -> tuple[int, str, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, str(response.getheader("Content-Type")), json.loads(response.read())


def connection_ended(sock: socket.socket) -> bool:
    """Whether the server ended the connection after its answer (it reads nothing more from it)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def json_body(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes (blank text, padded with whitespace): 422 once parsed."""
    head, tail = b'{"text": ""', b"}"
    return head + b" " * (size - len(head) - len(tail)) + tail


def auth(served: Served, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.token()}", **headers}


@pytest.mark.parametrize("framing", [{"Content-Length": str(128 * 1024 * 1024)}, {"Transfer-Encoding": "chunked"}])
def test_a_401_needs_no_byte_of_the_body(served: Served, framing: dict[str, str]) -> None:
    with send_head(served, {"Content-Type": "application/json", **framing}) as sock:
        status, media_type, problem = answer(sock)
        assert (status, media_type) == (401, "application/problem+json")
        assert problem["code"] == "missing_token"
        assert connection_ended(sock), "a refused body must not be drained"


@pytest.mark.parametrize(("content_type", "limit", "says"), [
    ("application/json", JSON_LIMIT, f"larger than the {JSON_LIMIT} bytes accepted for JSON"),
    ("multipart/form-data; boundary=x", UPLOAD_LIMIT, f"larger than the {UPLOAD_LIMIT} bytes accepted"),
])
def test_a_declared_length_over_the_limit_is_413_before_the_body(served: Served, content_type: str, limit: int,
                                                                  says: str) -> None:
    with send_head(served, auth(served, **{"Content-Type": content_type, "Content-Length": str(limit + 1)})) as sock:
        status, media_type, problem = answer(sock)
        assert (status, media_type, problem["code"]) == (413, "application/problem+json", "body_too_large")
        assert says in problem["detail"]
        assert connection_ended(sock)


@pytest.mark.parametrize("chunked", [True, False])
def test_a_json_body_at_the_limit_is_read_and_one_byte_more_is_413(served: Served, chunked: bool) -> None:
    for size, status in ((JSON_LIMIT, 422), (JSON_LIMIT + 1, 413)):
        body = json_body(size)
        framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
        parts = [chunk(body[i:i + 4096]) for i in range(0, size, 4096)] + [LAST_CHUNK] if chunked else [body]
        with send_head(served, auth(served, **{"Content-Type": "application/json", **framing})) as sock, \
                sending(sock, parts):
            got, _, problem = answer(sock)
        assert got == status, problem
        assert problem["detail"].startswith("text: ") if status == 422 else problem["code"] == "body_too_large"


def test_a_body_read_to_its_end_keeps_the_connection(served: Served) -> None:
    body = json_body(100)
    with send_head(served, auth(served, **{"Content-Type": "application/json", "Content-Length": "100"})) as sock:
        sock.sendall(body)
        assert answer(sock)[0] == 422
        url = urlsplit(served.base)
        sock.sendall(f"GET /livez HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        assert answer(sock)[0] == 200


@pytest.mark.parametrize(("content_type", "opening", "says"), [
    ("application/json", b'{"text": "', f"{JSON_LIMIT} bytes accepted for JSON"),
    ("multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n', f"{UPLOAD_LIMIT} bytes"),
])
def test_an_endless_chunked_body_is_refused_while_it_streams(served: Served, content_type: str, opening: bytes,
                                                             says: str) -> None:
    endless = itertools.chain([chunk(opening)], itertools.repeat(chunk(b"a" * 65536)))
    headers = auth(served, **{"Content-Type": content_type, "Transfer-Encoding": "chunked"})
    with send_head(served, headers) as sock, sending(sock, endless):
        status, _, problem = answer(sock)
        assert (status, problem["code"]) == (413, "body_too_large")
        assert says in problem["detail"]
        assert connection_ended(sock)


def test_multipart_form_limits_are_413_naming_them(served: Served) -> None:
    url = f"{served.base}/v1/jobs"
    long_field = requests.post(url, files={"text": (None, "x" * (FIELD_LIMIT + 1))}, headers=auth(served), timeout=30)
    many_parts = requests.post(url, files=[("avatar_ids", (None, "a"))] * 65, headers=auth(served), timeout=30)
    for response in (long_field, many_parts):
        assert response.status_code == 413 and response.headers["Content-Type"] == "application/problem+json"
        assert f"over {FIELD_LIMIT} bytes, or more than 64 parts" in response.json()["detail"]


def test_a_trickled_body_is_408_at_the_deadline(served: Served) -> None:
    headers = auth(served, **{"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with send_head(served, headers) as sock, sending(sock, itertools.repeat(chunk(b" ")), every_s=0.5):
        status, media_type, problem = answer(sock)
        assert (status, media_type, problem["code"]) == (408, "application/problem+json", "body_timeout")
        assert f"did not arrive within {BODY_TIMEOUT_S} s" in problem["detail"]
        assert connection_ended(sock)


def test_livez_answers_while_slow_bodies_are_open(served: Served) -> None:
    """Twenty clients trickling bodies without a token: each is answered at once and holds no thread."""
    socks = [send_head(served, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
             for _ in range(SLOW_BODIES)]
    with contextlib.ExitStack() as stack:
        for sock in socks:
            stack.enter_context(sock)
            stack.enter_context(sending(sock, itertools.repeat(chunk(b" ")), every_s=1.0))
        assert [requests.get(f"{served.base}/livez", timeout=10).status_code for _ in range(20)] == [200] * 20
        assert [answer(sock)[0] for sock in socks] == [401] * SLOW_BODIES


def test_slow_bodies_with_valid_tokens_take_only_the_reading_slots(served: Served) -> None:
    """A tenant trickling twenty bodies holds at most each process's reading slots; the rest are 503 at once,
    and /livez is answered well inside the body deadline."""
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    socks = [send_head(served, auth(served, **headers)) for _ in range(SLOW_BODIES)]
    with contextlib.ExitStack() as stack:
        for sock in socks:
            stack.enter_context(sock)
            stack.enter_context(sending(sock, itertools.repeat(chunk(b" ")), every_s=1.0))
        assert [requests.get(f"{served.base}/livez", timeout=BODY_TIMEOUT_S - 1).status_code
                for _ in range(20)] == [200] * 20
        answers = [answer(sock) for sock in socks]
    statuses = sorted(status for status, _, _ in answers)
    readers = 2 * (8 - 2)  # two processes of eight threads, two kept free in each
    assert set(statuses) <= {408, 503} and statuses.count(408) <= readers, statuses
    busy = next(problem for status, _, problem in answers if status == 503)
    assert busy["code"] == "busy" and "retry" in busy["detail"]


def test_a_client_that_sends_everything_before_reading_still_gets_its_answer(served: Served) -> None:
    """python-requests, so the Dify plugin, sends a whole upload before it reads a byte of the answer: a refused
    upload (no token, or over the limit) must still be answered, not reset or left hanging."""
    big = bytes(32 * UPLOAD_LIMIT)  # more than the kernel's socket buffers take in
    url = f"{served.base}/v1/jobs"
    unauthenticated = requests.post(url, files={"audio": ("a.wav", big)}, timeout=30)
    assert (unauthenticated.status_code, unauthenticated.json()["code"]) == (401, "missing_token")
    too_large = requests.post(url, files={"audio": ("a.wav", big)}, headers=auth(served), timeout=30)
    assert (too_large.status_code, too_large.json()["code"]) == (413, "body_too_large")


def test_one_key_cannot_take_every_reading_slot(served: Served) -> None:
    """Twenty trickled bodies under one key take at most half of each process's reading slots; another key's
    submits are still read and answered."""
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    socks = [send_head(served, auth(served, **headers)) for _ in range(SLOW_BODIES)]
    with contextlib.ExitStack() as stack:
        for sock in socks:
            stack.enter_context(sock)
            stack.enter_context(sending(sock, itertools.repeat(chunk(b" ")), every_s=1.0))
        token = mint_token(served.other_key, "tenant-b", RW, AUD, ISS)
        theirs = requests.post(f"{served.base}/v1/jobs", json={"text": "Mine.", "avatar_id": "no-such-avatar"},
                               headers={"Authorization": f"Bearer {token}"}, timeout=BODY_TIMEOUT_S - 1)
        answers = [answer(sock) for sock in socks]
    assert (theirs.status_code, theirs.json()["field"]) == (422, "avatar_id"), theirs.text  # read and checked
    busy = [problem for status, _, problem in answers if status == 503]
    assert busy and any("this API key" in problem["detail"] for problem in busy), answers


@pytest.mark.parametrize(("content_type", "status", "code"), [
    ("text/plain", 415, "unsupported_media_type"),
    (None, 415, "unsupported_media_type"),
    ("application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("multipart/form-data", 400, "malformed_body"),
])
def test_a_body_of_another_type_is_named_not_ignored(served: Served, content_type: str | None, status: int,
                                                      code: str) -> None:
    headers = auth(served) | ({"Content-Type": content_type} if content_type else {})
    response = requests.post(f"{served.base}/v1/jobs", data=b'{"text": "Hello."}', headers=headers, timeout=30)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    if status == 415:
        assert "application/json" in response.json()["detail"]


def test_a_body_cut_short_is_400_saying_so(served: Served) -> None:
    headers = auth(served, **{"Content-Type": "application/json", "Content-Length": "100"})
    with send_head(served, headers) as sock:
        sock.sendall(b'{"text": "Hello')
        sock.shutdown(socket.SHUT_WR)
        status, _, problem = answer(sock)
    assert status == 400 and "ended after 15 of the 100 bytes" in problem["detail"], problem


def test_a_number_python_will_not_read_is_400_not_500(served: Served) -> None:
    body = b'{"text": "Hello.", "x": ' + b"9" * 5000 + b"}"
    response = requests.post(f"{served.base}/v1/jobs", data=body, timeout=30,
                             headers=auth(served, **{"Content-Type": "application/json"}))
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/problem+json"
