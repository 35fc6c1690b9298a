"""A real PostgreSQL server for tests: Debian's ``postgresql-15``, a throwaway cluster started by the fixture.

The job table must live in a server once API and workers sit on different hosts (SQLite over NFS is
not safe). The cluster runs as the ``postgres`` user when the tests run as root (PostgreSQL refuses
root), listens on one address with password (SCRAM) authentication, and keeps its data in a fresh
directory that is removed afterwards. ``prefix`` runs it inside another namespace (the cluster test).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.bridge_fixtures import free_port

USER = "bridge"


def postgres_bin(tool: str) -> str:
    """Path of a PostgreSQL server program (Debian keeps them out of PATH, under /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} is not installed (make setup installs Debian's postgresql)")
    return path


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    password: str
    sockets: Path
    """The Unix socket directory: the fixture's own way in, from any network namespace (a path, not an address)."""
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL for ``database`` through psycopg 3 (what BRIDGE_DATABASE_URL takes)."""
        return f"postgresql+psycopg://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database owned by the bridge's user; returns its URL."""
        import psycopg

        with psycopg.connect(self.local(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def local(self, database: str = "postgres") -> str:
        """libpq connection string over the Unix socket (trusted: only this machine's users reach it)."""
        return f"host={self.sockets} port={self.port} user={USER} dbname={database} connect_timeout=2"


def _as_postgres_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix and ids that run a program as ``postgres`` when we are root; nothing otherwise."""
    if os.geteuid() != 0:
        return [], None, None
    entry = pwd.getpwnam("postgres")
    return ["runuser", "-u", "postgres", "--"], entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def run_postgres(host: str = "127.0.0.1", port: int | None = None, prefix: Sequence[str] = (),
                 timeout_s: float = 30.0) -> Iterator[PostgresServer]:
    """initdb a cluster in a fresh directory, start ``postgres`` on ``host:port``, wait until it takes logins."""
    import psycopg

    runas, uid, gid = _as_postgres_user()
    port = port or free_port()
    password = secrets.token_urlsafe(16)
    # pytest's temporary folders are private to root; postgres needs a directory of its own it can enter
    root = Path(tempfile.mkdtemp(prefix="th-postgres-"))
    data, sockets, log = root / "data", root / "run", root / "postgres.log"
    sockets.mkdir()
    (root / "pw").write_text(password)
    if uid is not None:
        for path in (root, sockets, root / "pw"):
            os.chown(path, uid, gid)
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*runas, postgres_bin("initdb"), "-D", str(data), "-U", USER, "-E", "UTF8", "--no-sync",
                        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={root / 'pw'}"],
                       check=True, capture_output=True, timeout=120)
        (root / "pw").unlink()
        with (data / "pg_hba.conf").open("a") as hba:  # the cluster test's workers connect from other hosts
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*prefix, *runas, postgres_bin("postgres"), "-D", str(data), "-h", host, "-p", str(port),
                 "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = PostgresServer(host, port, password, sockets, process, log)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(server.local()).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start:\n{log.read_text(errors='replace')[-3000:]}") from None
                time.sleep(0.1)
        yield server
    finally:
        if process is not None:
            process.terminate()  # SIGTERM: "smart" shutdown would wait for clients; the fixture's are gone
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)
