"""bridge.fetch: user URLs are downloaded within limits and can never reach the bridge's own network.

A real HTTP server on 127.0.0.1 plays the allow-listed internal host. ``socket.socket.connect`` is wrapped to
record every connection attempt, so "refused without connecting" is checked, not assumed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bridge.fetch import FetchError, FetchPolicy, check_url, fetch
from tests.bridge_fixtures import was_connected

BODY = bytes(range(256)) * 4  # 1 KiB
SECRET = "sig=TOPSECRET"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            self._route(url.path, query)

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        if path == "/small":
            self._send(200, BODY, Content_Type="audio/wav; charset=binary")
        elif path == "/declared-big":
            self._send(200, b"x" * 10_000)
        elif path == "/undeclared-big":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 10_000)
            self.close_connection = True
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"xyz")
            self.wfile.flush()
            time.sleep(10)
        elif path == "/short":  # promises 1000 bytes, sends 500, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 500)
            self.close_connection = True
        elif path == "/gzip":
            self._send(200, b"\x1f\x8b" + b"x" * 50, Content_Encoding="gzip")
        elif path == "/redirect":
            self._send(302, Location=query["to"][0])
        elif path.startswith("/loop/"):
            self._send(302, Location=f"/loop/{int(path.rsplit('/', 1)[1]) + 1}")
        else:
            self._send(404, b"nope")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up early, as tests make it
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``127.0.0.1:<port>`` of a running test server."""
    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()



@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every address any socket tried to connect to during the test."""
    seen: list[object] = []
    real = socket.socket.connect

    def record(self: socket.socket, address: object) -> None:
        seen.append(address)
        real(self, address)

    monkeypatch.setattr(socket.socket, "connect", record)
    return seen


def policy(server: str, **changes: object) -> FetchPolicy:
    values: dict = {"allow_http_hosts": frozenset({server}), "max_bytes": 5000, "timeout_s": 5.0}
    values.update(changes)
    return FetchPolicy(**values)


def test_allow_listed_host_serves_a_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "audio.bin"
    result = fetch(f"http://{server}/small?{SECRET}", dest, policy(server), field="audio_url")
    assert dest.read_bytes() == BODY
    assert result.size == len(BODY)
    assert result.content_type == "audio/wav"
    assert result.final_url == f"http://{server}/small"
    assert [p.name for p in tmp_path.iterdir()] == ["audio.bin"], "the temporary file must be gone"


def test_proxy_settings_in_the_environment_are_ignored(server: str, trap: socket.socket, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = f"http://127.0.0.1:{trap.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fetch(f"http://{server}/small", tmp_path / "a", policy(server))
    assert not was_connected(trap)


def test_bare_host_entry_allows_any_port_and_relative_redirects(server: str, tmp_path: Path) -> None:
    bare = policy(server, allow_http_hosts={"127.0.0.1"})
    result = fetch(f"http://{server}/redirect?to=/small", tmp_path / "a", bare)
    assert result.final_url == f"http://{server}/small"
    assert (tmp_path / "a").read_bytes() == BODY


@pytest.mark.parametrize("path", ["/declared-big", "/undeclared-big"])
def test_byte_cap(server: str, tmp_path: Path, path: str) -> None:
    with pytest.raises(FetchError, match="limit") as err:
        fetch(f"http://{server}{path}", tmp_path / "a", policy(server), field="audio_url")
    assert err.value.code == "too_large"
    assert str(err.value).startswith("audio_url: ")
    assert not list(tmp_path.iterdir()), "no file, temporary or final, may be left behind"


@pytest.mark.parametrize("path", ["/drip", "/stall"])
def test_total_timeout(server: str, tmp_path: Path, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"did not finish within 1 s") as err:
        fetch(f"http://{server}{path}", tmp_path / "a", policy(server, timeout_s=1.0))
    assert time.monotonic() - started < 2.0
    assert err.value.code == "fetch_timeout"
    assert not list(tmp_path.iterdir())


def test_truncated_body(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="broke before the whole file arrived"):
        fetch(f"http://{server}/short", tmp_path / "a", policy(server))
    assert not list(tmp_path.iterdir())


def test_http_error_names_the_status_not_the_query(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="answered 404 Not Found") as err:
        fetch(f"http://{server}/missing?{SECRET}", tmp_path / "a", policy(server), field="audio_url")
    assert "TOPSECRET" not in str(err.value)


def test_compressed_body_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="compressed"):
        fetch(f"http://{server}/gzip", tmp_path / "a", policy(server))


def test_redirect_limit(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="more than 3 times") as err:
        fetch(f"http://{server}/loop/0", tmp_path / "a", policy(server))
    assert err.value.code == "too_many_redirects"


SSRF = [
    ("http://127.0.0.1/", "plain http"),
    ("https://localhost/", "loopback"),
    ("https://2130706433/", "loopback"),
    ("https://0x7f.1/", "loopback"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),
    ("https://[::ffff:8.8.8.8]/", "IPv4-mapped"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://[64:ff9b::a00:1]/", "reserved"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://10.0.0.1/", "private"),
    ("https://192.168.1.1/", "private"),
    ("https://100.64.0.1/", "CGNAT"),
    ("https://224.0.0.1/", "multicast"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[::1]/", "loopback"),
    ("https://[fd00::1]/", "private"),
    ("file:///etc/passwd", "only https"),
    ("ftp://example.com/a.wav", "only https"),
    ("gopher://example.com/_x", "only https"),
    ("http://example.com/a.wav", "plain http"),
    ("https://example.com:8443/a.wav", "port 8443"),
    ("https://example.com:80/a.wav", "port 80 is not allowed"),
    ("https://user:pw@example.com/a.wav", "user name or password"),
    ("example.com/a.wav", "without a scheme"),
]


@pytest.mark.parametrize(("url", "reason"), SSRF)
def test_ssrf_refused_without_connecting(url: str, reason: str, tmp_path: Path, connects: list[object]) -> None:
    strict = FetchPolicy(allow_http_hosts=frozenset(), max_bytes=5000, timeout_s=5.0)
    with pytest.raises(FetchError, match=reason) as err:
        fetch(url, tmp_path / "a", strict, field="audio_url")
    assert err.value.code == "url_not_allowed"
    assert err.value.field == "audio_url"
    assert connects == []
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("port", [80, 8080, 8443])
def test_check_url_allows_https_on_443_only(port: int, connects: list[object]) -> None:
    strict = FetchPolicy(allow_http_hosts=frozenset(), max_bytes=5000, timeout_s=5.0)
    with pytest.raises(FetchError, match=f"callback_url: port {port} is not allowed .*use the standard https port 443"):
        check_url(f"https://example.com:{port}/hook", strict, field="callback_url")
    assert connects == []


def test_check_url_lets_an_allow_listed_host_use_port_80() -> None:
    internal = FetchPolicy(allow_http_hosts=frozenset({"minio.internal"}), max_bytes=5000, timeout_s=5.0)
    check_url("https://minio.internal:80/bucket/a.wav", internal, field="audio_url")
    check_url("http://minio.internal/bucket/a.wav", internal, field="audio_url")


def test_hostname_resolving_to_loopback_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   connects: list[object]) -> None:
    """A public-looking name whose DNS answer is internal (the rebinding set-up) is refused at resolution."""
    def resolve(host: str, port: object, *args: object, **kwargs: object) -> list:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    strict = FetchPolicy(allow_http_hosts=frozenset(), max_bytes=5000, timeout_s=5.0)
    expected = "audio_url: the host files.example resolves to a loopback address (127.0.0.1); use a public https URL"
    with pytest.raises(FetchError, match=re.escape(expected)):
        fetch(f"https://files.example/a.wav?{SECRET}", tmp_path / "a", strict, field="audio_url")
    assert connects == []


def test_connects_to_the_vetted_address(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The connection goes to the IP that was checked, not to a second lookup's answer."""
    answers = iter(["93.184.215.14", "127.0.0.1"])
    seen: list[object] = []

    def resolve(host: str, port: object, *args: object, **kwargs: object) -> list:
        """A name gets a public answer first and a loopback one after; an IP literal is itself."""
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 443))]

    def refuse(self: socket.socket, address: object) -> None:
        seen.append(address)
        raise ConnectionRefusedError

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    strict = FetchPolicy(allow_http_hosts=frozenset(), max_bytes=5000, timeout_s=5.0)
    with pytest.raises(FetchError, match=re.escape("could not connect to https://files.example;")):
        fetch("https://files.example/a.wav", tmp_path / "a", strict)
    assert seen and all(address[0] == "93.184.215.14" for address in seen)  # type: ignore[index]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_redirect_to_internal_address_is_refused_before_connecting(
        server: str, trap: socket.socket, tmp_path: Path, scheme: str) -> None:
    """An allow-listed host may not bounce the bridge to a host that is not: each hop is vetted again."""
    port2 = trap.getsockname()[1]
    # Port 2 is an allowed port here, so the https hop gets as far as the address filter.
    lenient = policy(server, allowed_ports=frozenset({443, port2}))
    with pytest.raises(FetchError, match=f"audio_url: the link redirected to {scheme}://127.0.0.1:{port2}; ") as err:
        fetch(f"http://{server}/redirect?to={scheme}://127.0.0.1:{port2}/x", tmp_path / "a", lenient,
              field="audio_url")
    assert err.value.code == "url_not_allowed"
    assert ("plain http" if scheme == "http" else "loopback address") in str(err.value)
    assert not was_connected(trap), "the redirect target must never see a connection"
    assert not list(tmp_path.iterdir())


def test_policy_validates_its_limits() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FetchPolicy(allow_http_hosts=frozenset(), max_bytes=0, timeout_s=1.0)
