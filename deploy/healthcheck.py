"""Health checks for the containers: ``python healthcheck.py api`` or ``python healthcheck.py worker``.

Exit status 0 means healthy. Settings come from the same environment as the process being checked.

- ``api``: ``GET /livez`` on this container's port answers 200. Liveness only, as in the bridge: a Redis or database
  outage shows on ``/readyz`` and in alerts, and restarting the API would not cure it.
- ``worker``: a worker on this host wrote its heartbeat to the broker's Redis within three heartbeat intervals.
  Workers name themselves ``<queue>-<pid>@<hostname>``, and each container has its own hostname.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request

from bridge.settings import BridgeSettings

TIMEOUT_S = 4.0
STALE_AFTER_BEATS = 3


def check_api(settings: BridgeSettings) -> str | None:
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}/livez"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except OSError as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def check_worker(settings: BridgeSettings, hostname: str | None = None) -> str | None:
    import redis

    from bridge.metrics import read_heartbeats

    hostname = hostname or socket.gethostname()
    client = redis.Redis.from_url(settings.broker, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
    try:
        beats = {name: at for name, at in read_heartbeats(client).items() if name.endswith("@" + hostname)}
    except redis.RedisError as exc:
        return f"cannot read heartbeats: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    if not beats:
        return f"no worker on {hostname} has a heartbeat in Redis"
    age = time.time() - max(beats.values())
    limit = STALE_AFTER_BEATS * settings.worker_heartbeat_s
    return None if age <= limit else f"last heartbeat from {hostname} is {age:.0f} s old (limit {limit:.0f} s)"


def main(argv: list[str]) -> int:
    checks = {"api": check_api, "worker": check_worker}
    if len(argv) != 1 or argv[0] not in checks:
        print("usage: python healthcheck.py api|worker", file=sys.stderr)
        return 2
    problem = checks[argv[0]](BridgeSettings())
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
