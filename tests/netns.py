"""Several hosts on one machine: Linux network namespaces on a private Ethernet segment.

Each host is a namespace (``ip netns``) with its own loopback, its own address on the segment and, for
the programs started on it, its own hostname (a UTS namespace), so a worker cannot tell it shares a
kernel with the others. The segment is a Linux bridge inside a namespace of its own, joined to each
host by a veth pair: nothing is added to the machine's own network, and no packet can leave it.
Filesystems stay shared, which is what an NFS mount of the storage root looks like to the bridge.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:  # most often: not root (network namespaces need CAP_SYS_ADMIN)
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _enter(netns: str) -> None:
    """Move the calling thread (only it: network namespaces are per thread) into ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str
    """The hostname programs started here see."""
    netns: str
    ip: str
    _thread: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a process on this host: in its network namespace, under its own hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in this test process, on a thread that lives in this host's network namespace.

        Sockets it opens (an HTTP client, say) belong to this host, so the test talks to the cluster as
        a program on this host would, without adding an interface anywhere else.
        """
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, f"netns-{self.name}", _enter, (self.netns,))
        return self._thread.submit(fn, *args, **kwargs).result()

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=True)
        return [int(pid) for pid in out.stdout.split()]

    def power_off(self, timeout_s: float = 10.0) -> list[int]:
        """SIGKILL every process on this host, as when it loses power; returns what was killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed += [pid for pid in pids if pid not in killed]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {pids} survived SIGKILL")
            time.sleep(0.05)
        return killed

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None


@contextlib.contextmanager
def segment(names: Sequence[str], subnet: str = "10.213.0") -> Iterator[dict[str, Host]]:
    """Hosts ``names`` with addresses ``<subnet>.2``, ``.3``, … on one switch; all removed on exit."""
    tag = uuid.uuid4().hex[:6]
    switch = f"th-{tag}-switch"
    hosts = {name: Host(name, f"th-{tag}-{name}", f"{subnet}.{index + 2}") for index, name in enumerate(names)}
    made: list[str] = []
    try:
        for netns in (switch, *(host.netns for host in hosts.values())):
            _ip("netns", "add", netns)
            made.append(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for index, host in enumerate(hosts.values()):
            port = f"port{index}"
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
        yield hosts
    finally:
        for host in hosts.values():
            host.close()
            if host.netns in made:
                with contextlib.suppress(RuntimeError):
                    host.power_off()
        for netns in reversed(made):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", netns)  # takes its veth ends, and so the switch ports, with it
