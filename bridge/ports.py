"""Who holds a TCP port: so `bridge up` and `make demo` can say why they cannot listen, before starting anything.

gunicorn retries a taken port for five seconds and then exits, leaving "Address already in use" only in its log;
a process reading /readyz meanwhile may even be answered by whatever holds the port.
"""

from __future__ import annotations

import contextlib
import errno
import socket

import psutil


def bind_error(host: str, port: int) -> str | None:
    """Why the API could not listen on ``host:port`` now, or None if it could.

    Binds the way gunicorn does (``SO_REUSEADDR``), so a port left in TIME_WAIT by a stopped bridge is free.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"BRIDGE_HOST {host} does not resolve; set it to an address of this machine"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} is already in use by {holder(port)}; stop it, or set BRIDGE_PORT to a free "
                        "port")
            return f"cannot listen on {host}:{port} ({exc.strerror}); check BRIDGE_HOST and BRIDGE_PORT"
    return None


def listening_pids(port: int) -> set[int]:
    """Processes with a socket listening on ``port`` (only those this user may inspect, unless root)."""
    with contextlib.suppress(psutil.Error, OSError):
        return {conn.pid for conn in psutil.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid}
    return set()


def holder(port: int) -> str:
    """``pid 123 (redis-server 127.0.0.1:8808)``, or "another program" when the holder cannot be seen."""
    for pid in sorted(listening_pids(port)):  # a gunicorn's workers share their master's socket: lowest pid first
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            command = " ".join(process.cmdline()) or process.name()
            return f"pid {pid} ({command[:120]})"
    return "another program"


def serves(pid: int, port: int) -> bool:
    """Whether ``pid`` or one of its descendants is what listens on ``port``."""
    try:
        parent = psutil.Process(pid)
        tree = {pid, *(child.pid for child in parent.children(recursive=True))}
    except psutil.Error:
        return False
    return bool(listening_pids(port) & tree)
