"""A real S3 server for tests: single-node Ceph (one mon, one memstore OSD, radosgw) on loopback.

radosgw is the one local S3 server that enforces SigV4 signatures, link expiry, the signed Host and
private-by-default buckets (``shared/notes/tts-and-object-store.md``, appendix). Everything it writes
(config, mon store, logs, admin sockets, pid files) stays under the work directory, and both the mon
and the gateway listen on free ports, so two test sessions on one machine do not collide.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.bridge_fixtures import free_port

ACCESS_KEY = "bridge-test"
SECRET_KEY = "bridge-test-secret-key"
TOOLS = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "radosgw", "radosgw-admin")

CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
# crc on every messenger: with auth none, radosgw otherwise loops on "get_initial_auth_request returned -13"
ms mon client mode = crc
ms client mode = crc
ms mon service mode = crc secure
ms mon cluster mode = crc secure
ms bind ipv4 = true
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
# each mon command (rgw creates a dozen pools) otherwise waits ~1 s for paxos: start 12 s -> 2 s
paxos propose interval = 0.05
paxos min wait = 0.01
# rgw's pool setup sometimes stalls until the next mon tick (default 5 s): two clusters starting at once
# on 2 cores took 3.5-7 s to be ready, 2.3-2.9 s with this
mon tick interval = 1
run dir = {root}/run
admin socket = {root}/run/$cluster-$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
mon cluster log file = {root}/log/cluster.log
crash dir = {root}/crash
keyring = {root}/keyring

[mon]
mon data = {root}/mon

[osd]
osd data = {root}/osd0
osd objectstore = memstore
memstore device bytes = 2147483648
osd journal size = 0

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
# no "rgw dns name": with one set, rgw takes any other Host as a bucket name (CNAME-style hosting), so
# a link signed for a public host would 404 behind a proxy that passes that Host through
"""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    """``127.0.0.1:<port>``: host and port without a scheme (plain http), as ``S3Config.endpoint`` takes it."""
    access_key: str
    secret_key: str
    workdir: Path
    start_s: float
    """Seconds from the first command to the gateway answering and the user existing."""
    processes: dict[str, subprocess.Popen[bytes]] = field(repr=False)


@contextlib.contextmanager
def run_radosgw(workdir: Path, timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Start mon, OSD and radosgw in the foreground, create the S3 user, wait for it; SIGKILL all on exit.

    SIGKILL, by each daemon's own pid: a memstore OSD ignores SIGTERM. A step that does not finish in
    ``timeout_s`` raises ``RuntimeError`` with the tail of the daemons' logs.
    """
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not installed (Debian: radosgw ceph-mon ceph-osd)")
    root = Path(workdir).resolve()
    for sub in ("run", "log", "crash", "mon", "osd0", "rgw"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    mon_port, rgw_port = free_port(), free_port()
    while rgw_port == mon_port:
        rgw_port = free_port()
    conf = root / "ceph.conf"
    conf.write_text(CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, root=root))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    started = time.monotonic()
    deadline = started + timeout_s

    def run(*argv: str) -> str:
        left = max(deadline - time.monotonic(), 0.1)
        try:
            done = subprocess.run([argv[0], "--conf", str(conf), *argv[1:]], capture_output=True, timeout=left,
                                  cwd=root, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(argv)}: not done within the {timeout_s:.0f} s start budget\n"
                               f"{_logs(root)}") from None
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-2000:]}\n{_logs(root)}")
        return done.stdout.decode()

    def daemon(name: str, *argv: str) -> None:
        with (root / "log" / f"{name}.out").open("wb") as out:
            processes[name] = subprocess.Popen([argv[0], "--conf", str(conf), "-f", *argv[1:]], cwd=root,
                                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    try:
        subprocess.run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
                        str(root / "monmap")], check=True, capture_output=True, timeout=timeout_s)
        run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(root / "monmap"))
        daemon("mon", "ceph-mon", "-i", "a")
        osd_id = run("ceph", "--connect-timeout", str(int(timeout_s)), "osd", "create", osd_uuid).strip()
        run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        daemon("osd", "ceph-osd", "-i", osd_id)
        daemon("rgw", "radosgw", "-n", "client.rgw")
        endpoint = f"127.0.0.1:{rgw_port}"
        _wait_http(f"http://{endpoint}/", processes, root, deadline)
        run("radosgw-admin", "user", "create", "--uid=bridge-test", "--display-name=bridge test",
            f"--access-key={ACCESS_KEY}", f"--secret-key={SECRET_KEY}")
        yield S3Server(endpoint, ACCESS_KEY, SECRET_KEY, root, time.monotonic() - started, processes)
    finally:
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for process in processes.values():
            process.wait()


def _wait_http(url: str, processes: dict[str, subprocess.Popen[bytes]], root: Path, deadline: float) -> None:
    """Until the gateway answers any HTTP status (an anonymous GET / is a 200 with an empty bucket list)."""
    while True:
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.ConnectionError:
            dead = [name for name, process in processes.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else "no answer before the deadline"
                raise RuntimeError(f"radosgw did not come up at {url} ({why})\n{_logs(root)}") from None
            time.sleep(0.05)


def _logs(root: Path, lines: int = 15) -> str:
    """The last lines of every daemon log, for the error message of a start that failed."""
    parts = []
    for log in sorted((root / "log").glob("*")):
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(parts)
