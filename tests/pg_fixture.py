"""A real PostgreSQL server for tests: Debian's ``postgresql``, a throwaway cluster started by the fixture.

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
import signal
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


@dataclass
class PostgresServer:
    """A cluster in ``root``: ``start`` and ``stop`` it (a restart is both), connect with ``url`` or ``local``."""

    host: str
    port: int
    password: str
    root: Path
    prefix: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def sockets(self) -> Path:
        """The Unix socket directory: the fixture's own way in, from any network namespace (a path, not an address)."""
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL for ``database`` through psycopg 3 (what BRIDGE_DATABASE_URL takes)."""
        return f"postgresql+psycopg://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    def local(self, database: str = "postgres") -> str:
        """libpq connection string over the Unix socket (trusted: only this machine's users reach it)."""
        return f"host={self.sockets} port={self.port} user={USER} dbname={database} connect_timeout=2"

    def create_database(self, name: str) -> str:
        """A fresh, empty database owned by the bridge's user; returns its URL."""
        import psycopg

        with psycopg.connect(self.local(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self, timeout_s: float = 30.0) -> None:
        import psycopg

        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.prefix, *_as_postgres_user(), postgres_bin("postgres"), "-D", str(self.root / "data"),
                 "-h", self.host, "-p", str(self.port), "-k", str(self.sockets), "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.local()).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start:\n{self.log.read_text(errors='replace')[-3000:]}"
                                       ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are cut, as clients see when the server restarts."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _as_postgres_user() -> list[str]:
    """A prefix that runs a program as ``postgres`` (PostgreSQL refuses root) when we are root; exec, no fork."""
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def run_postgres(host: str = "127.0.0.1", port: int | None = None, prefix: Sequence[str] = ()
                 ) -> Iterator[PostgresServer]:
    """initdb a cluster in a fresh directory, start ``postgres`` on ``host:port``, wait until it takes logins."""
    # pytest's temporary folders are private to root; postgres needs a directory of its own it can enter
    root = Path(tempfile.mkdtemp(prefix="th-postgres-"))
    server = PostgresServer(host, port or free_port(), secrets.token_urlsafe(16), root, tuple(prefix))
    server.sockets.mkdir()
    (root / "pw").write_text(server.password)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (root, server.sockets, root / "pw"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run([*_as_postgres_user(), postgres_bin("initdb"), "-D", str(root / "data"), "-U", USER,
                        "-E", "UTF8", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                        f"--pwfile={root / 'pw'}"], check=True, capture_output=True, timeout=120)
        (root / "pw").unlink()
        with (root / "data" / "pg_hba.conf").open("a") as hba:  # the cluster test's workers connect from other hosts
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
