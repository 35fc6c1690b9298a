"""Downloading a user-supplied URL (``audio_url``, an avatar ``url``) without letting it reach our own network.

requests-hardened resolves each host once, refuses private, loopback, link-local, CGNAT, multicast and NAT64
addresses, and connects to the address it vetted, so a DNS answer cannot change between the check and the
connection. This module adds what it leaves to the caller: https only, the default ports, an allow-list for
internal hosts, a redirect loop that vets every hop before connecting, a byte cap, a total deadline, and error
messages a user can act on that never echo the query string (it may carry a signature).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import EXTRA_BLOCKED_NET_RANGES, InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter

from bridge.settings import BridgeSettings
from engine.errors import EngineError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_CHUNK = 64 * 1024
_CONNECT_TIMEOUT_S = 10.0
_USER_AGENT = "talking-head-bridge (media fetch)"
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,127}")


class FetchError(EngineError):
    """A refused or failed download. ``str(err)`` starts with the field and is safe to show the user."""

    code = "fetch_failed"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, field=field)
        if code is not None:
            self.code = code


class _Refused(requests.RequestException):
    """Raised inside the adapter so a hop is stopped before any connection; ``args[0]`` is the user reason."""


@dataclass(frozen=True)
class FetchPolicy:
    """What a download may do.

    ``allow_http_hosts`` holds ``host`` (any port) or ``host:port`` entries (``[v6]:port`` for IPv6). Those
    hosts may use plain http, any port and private addresses: an internal MinIO, a test server. Every other
    host must be https on ``allowed_ports`` (443 alone: file hosts serve https there, and every other port only
    widens what a crafted URL can reach) and resolve to a public address. ``timeout_s`` bounds the whole download,
    redirects included, not each read.
    """

    allow_http_hosts: frozenset[str]
    max_bytes: int
    timeout_s: float
    max_redirects: int = 3
    allowed_ports: frozenset[int] = frozenset({443})

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.timeout_s <= 0 or self.max_redirects < 0:
            raise ValueError("FetchPolicy needs max_bytes >= 1, timeout_s > 0 and max_redirects >= 0")
        hosts = frozenset(entry.strip().lower() for entry in self.allow_http_hosts if entry.strip())
        object.__setattr__(self, "allow_http_hosts", hosts)

    def allow_listed(self, host: str, port: int) -> bool:
        shown = f"[{host}]" if ":" in host else host
        return bool({host, shown, f"{shown}:{port}"} & self.allow_http_hosts)


def fetch_policy(settings: BridgeSettings) -> FetchPolicy:
    """The bridge's policy: its allow-list, its body size limit as the byte cap, its fetch timeout."""
    return FetchPolicy(allow_http_hosts=frozenset(settings.fetch_allow_http_hosts),
                       max_bytes=settings.max_content_length, timeout_s=settings.fetch_timeout_s)


@dataclass(frozen=True)
class FetchResult:
    final_url: str
    """Where the file came from after redirects, without query string, fragment or credentials."""
    size: int
    content_type: str | None
    """The server's media type without parameters; a hint only, ffprobe decides what the file is."""


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    allow_listed: bool

    @property
    def origin(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{shown}" + ("" if default else f":{self.port}")


def forbidden_reason(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is, or None when it is a public unicast address.

    IPv4-mapped IPv6 addresses are refused even for a public IPv4 address: no real file host needs one.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return forbidden_reason(ip.ipv4_mapped) or "an IPv4-mapped IPv6 address"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a shared (CGNAT) address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (ip.is_reserved or any(ip in net for net in EXTRA_BLOCKED_NET_RANGES), "a reserved address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((label for hit, label in checks if hit), None)


def _vet(url: str, policy: FetchPolicy) -> _Target:
    """Scheme, credentials, port and allow-list: everything that can be refused before resolving the host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _Refused("the URL is malformed; check its host and port") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        got = f"{scheme}:" if scheme else "a URL without a scheme"
        raise _Refused(f"only https URLs are accepted, not {got}; use a public https URL")
    if parts.username is not None or parts.password is not None:
        raise _Refused("URLs with a user name or password in them are not accepted")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _Refused("the URL has no host")
    port = port or _DEFAULT_PORTS[scheme]
    target = _Target(scheme, host, port, policy.allow_listed(host, port))
    if target.allow_listed:
        return target
    if scheme == "http":
        raise _Refused(f"plain http is not accepted ({target.origin}); use an https URL")
    if target.port not in policy.allowed_ports:
        raise _Refused(f"port {target.port} is not allowed ({target.origin}); use the standard https port 443")
    with contextlib.suppress(ValueError):
        literal = ipaddress.ip_address(host)
        if reason := forbidden_reason(literal):
            raise _Refused(f"the host {host} is {reason}; use a public https URL")
    return target


class _PolicyAdapter(IPFilterAdapter):
    """requests-hardened's pinning adapter, but exempting allow-listed hosts and vetting the URL it is given.

    Vetting here, on the URL requests will really connect to, closes any gap between our parse and theirs.
    """

    def __init__(self, policy: FetchPolicy, *, is_https: bool) -> None:
        super().__init__(is_https_proto=is_https, allow_loopback=False)
        self._policy = policy

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if _vet(str(request.url), self._policy).allow_listed:
            return HTTPAdapter.build_connection_pool_key_attributes(self, request, verify, cert)
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        pinned = ipaddress.ip_address(str(host_params["host"]).strip("[]"))
        if forbidden_reason(pinned):
            raise InvalidIPAddress(pinned)
        return host_params, pool_kwargs


def _session(policy: FetchPolicy) -> requests.Session:
    config = Config(
        ip_filter_enable=True, ip_filter_allow_loopback_ips=False, never_redirect=True,
        default_timeout=(_CONNECT_TIMEOUT_S, policy.timeout_s), user_agent_override=_USER_AGENT,
    )
    session = HTTPSession(config)
    session.trust_env = False  # no proxies, netrc or CA bundles from the environment
    session.mount("http://", _PolicyAdapter(policy, is_https=False))
    session.mount("https://", _PolicyAdapter(policy, is_https=True))
    return session


def _public_url(url: str) -> str:
    return _origin(url) + urlsplit(url).path


def _media_type(value: str | None) -> str | None:
    media_type = (value or "").split(";", 1)[0].strip().lower()
    return media_type if _MEDIA_TYPE.fullmatch(media_type) else None


def fetch(url: str, dest: Path, policy: FetchPolicy, *, field: str = "url") -> FetchResult:
    """Download ``url`` to ``dest`` (written whole via a temporary file and ``os.replace``, or not at all).

    Raises ``FetchError``; its message starts with ``field`` and says what to change.
    """
    deadline = time.monotonic() + policy.timeout_s
    current = url
    with _session(policy) as session:
        for hop in range(policy.max_redirects + 1):
            said = _Said(field, "" if hop == 0 else f"the link redirected to {_origin(current)}; ")
            try:
                target = _vet(current, policy)
            except _Refused as exc:
                raise said.error(str(exc.args[0]), "url_not_allowed") from None
            try:
                response = session.get(
                    current, stream=True, allow_redirects=False, timeout=_timeouts(deadline),
                    headers={"Accept-Encoding": "identity"},
                )
            except (requests.RequestException, TimeoutError) as exc:
                raise _user_error(exc, said, target, policy, deadline) from None
            with response:
                location = session.get_redirect_target(response)
                if location is None:
                    size = _save(response, dest, deadline, policy, said, target.origin)
                    return FetchResult(_public_url(current), size, _media_type(response.headers.get("Content-Type")))
            current = urljoin(current, location).split("#", 1)[0]
    raise _Said(field, "").error(f"the link redirects more than {policy.max_redirects} times; link to the file itself",
                                 "too_many_redirects")


def check_url(url: str, policy: FetchPolicy, *, field: str = "url") -> None:
    """Refuse a URL the fetcher would refuse, now (at submit time), resolving its host but connecting nowhere.

    Delivery checks again, connecting only to the address it vetted, so a DNS answer that changes in
    between gains nothing.
    """
    said = _Said(field, "")
    try:
        target = _vet(url, policy)
    except _Refused as exc:
        raise said.error(str(exc.args[0]), "url_not_allowed") from None
    if target.allow_listed:
        return
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise said.error(f"the host {target.host} does not resolve; check the URL", "url_not_allowed") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if reason := forbidden_reason(address):
            raise said.error(f"the host {target.host} resolves to {reason} ({address}); use a public https URL",
                             "url_not_allowed")


def post_json(url: str, body: bytes, headers: dict[str, str], policy: FetchPolicy, *, field: str = "url") -> int:
    """POST ``body`` as JSON under the same rules as ``fetch``; redirects are not followed. The HTTP status.

    Raises ``FetchError`` when the URL is refused or the server cannot be reached in time.
    """
    deadline = time.monotonic() + policy.timeout_s
    said = _Said(field, "")
    try:
        target = _vet(url, policy)
    except _Refused as exc:
        raise said.error(str(exc.args[0]), "url_not_allowed") from None
    with _session(policy) as session:
        try:
            response = session.post(url, data=body, allow_redirects=False, timeout=_timeouts(deadline),
                                    headers={"Content-Type": "application/json", **headers})
        except (requests.RequestException, TimeoutError) as exc:
            raise _user_error(exc, said, target, policy, deadline) from None
        with response:
            return int(response.status_code)


@dataclass(frozen=True)
class _Said:
    """How a message about one hop starts: the field, and for a redirect hop, where it was sent."""

    field: str
    prefix: str

    def error(self, reason: str, code: str) -> FetchError:
        return FetchError(f"{self.field}: {self.prefix}{reason}", field=self.field, code=code)


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, for messages: never its path, query or credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"{parts.scheme}://" + (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "a malformed URL"


def _timeouts(deadline: float) -> tuple[float, float]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return min(_CONNECT_TIMEOUT_S, remaining), remaining


def _save(response: requests.Response, dest: Path, deadline: float, policy: FetchPolicy, said: _Said,
          where: str) -> int:
    if response.status_code != HTTPStatus.OK:
        raise said.error(f"{where} answered {response.status_code} {_phrase(response.status_code)}; "
                         "check that the link works and has not expired", "fetch_failed")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise said.error(f"{where} sent the file compressed ({encoding[:20]}); serve it as is", "fetch_failed")
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise said.error(f"the file is {int(declared)} bytes; the limit is {policy.max_bytes}; use a smaller file",
                         "too_large")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            size = _stream(response, out, deadline, policy, said, where)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def _stream(response: requests.Response, out: IO[bytes], deadline: float, policy: FetchPolicy, said: _Said,
            where: str) -> int:
    """Copy the body one socket read at a time, checking the deadline and the cap between reads.

    ``read1`` returns after a single receive; ``read(n)`` waits for ``n`` bytes, so a server dripping a byte a
    second could hold it past the deadline.
    """
    raw = response.raw
    size = 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(remaining)  # a stalled server cannot hold one receive past the deadline
            chunk = raw.read1(_CHUNK, decode_content=False)
            if not chunk:
                return size
            size += len(chunk)
            if size > policy.max_bytes:
                raise said.error(f"the file is larger than the {policy.max_bytes} byte limit; use a smaller file",
                                 "too_large")
            out.write(chunk)
    except (TimeoutError, urllib3.exceptions.TimeoutError):
        raise said.error(_too_slow(policy), "fetch_timeout") from None
    except (urllib3.exceptions.HTTPError, OSError):
        raise said.error(f"the connection to {where} broke before the whole file arrived; try again",
                         "fetch_failed") from None


def _too_slow(policy: FetchPolicy) -> str:
    return f"the download did not finish within {policy.timeout_s:g} s; use a smaller file or a faster host"


def _phrase(status: int) -> str:
    """The standard reason phrase: the server's own one is attacker-controlled text."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "(non-standard status)"


def _user_error(exc: Exception, said: _Said, target: _Target, policy: FetchPolicy, deadline: float) -> FetchError:
    """Map a failure before the body to a message a user can act on; requests' own text holds the full URL."""
    where, host = target.origin, target.host
    if isinstance(exc, _Refused):
        return said.error(str(exc.args[0]), "url_not_allowed")
    if isinstance(exc, InvalidIPAddress):
        ip = exc.args[0] if exc.args else "?"
        kind = forbidden_reason(ip) if isinstance(ip, IPAddress) else None
        reason = f"the host {host} resolves to {kind or 'a non-public address'} ({ip}); use a public https URL"
        return said.error(reason, "url_not_allowed")
    if isinstance(exc, TimeoutError | requests.Timeout):
        if time.monotonic() >= deadline - 0.05:
            return said.error(_too_slow(policy), "fetch_timeout")
        return said.error(f"{where} did not answer in time; try again later", "fetch_timeout")
    if isinstance(exc, requests.exceptions.InvalidURL):
        return said.error("the URL is malformed; check it", "url_not_allowed")
    if isinstance(exc, requests.exceptions.SSLError):
        return said.error(f"the TLS certificate of {where} could not be verified; use a URL with a valid certificate",
                          "fetch_failed")
    if isinstance(exc, requests.ConnectionError) and isinstance(exc.__cause__, socket.gaierror):
        return said.error(f"the host name {host} could not be resolved; check the URL", "fetch_failed")
    if isinstance(exc, requests.ConnectionError):
        return said.error(f"could not connect to {where}; check the URL or try again later", "fetch_failed")
    return said.error(f"the download from {where} failed ({type(exc).__name__}); check the URL", "fetch_failed")
