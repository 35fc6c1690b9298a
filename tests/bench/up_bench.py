"""`make bench`: how long `python -m bridge up` takes until /readyz answers 200, on this machine.

The one-machine stack (API, worker, its own Redis) is what a new user starts first; its start-up
target (ready within 10 s on 2 cores) lives here rather than in a timed test, where a busy CI
machine would fail it for reasons that are not the product's.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from engine.samples import ensure_samples  # noqa: E402
from engine.settings import EngineSettings  # noqa: E402
from tests.bridge_fixtures import free_port  # noqa: E402

REPEATS = 3
TARGET_S = 10.0
GIVE_UP_S = 120.0


def ready_after(root: Path, engine_root: Path) -> float:
    """Seconds from starting `bridge up` to its first 200 on /readyz; the stack is stopped with Ctrl-C after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_"))}
    env.update(BRIDGE_STORAGE_ROOT=str(root), BRIDGE_PORT=str(port),
               BRIDGE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", ENGINE_STORAGE_ROOT=str(engine_root))
    started = time.monotonic()
    stack = subprocess.Popen([sys.executable, "-m", "bridge", "up"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.monotonic() - started < GIVE_UP_S:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise SystemExit(f"bridge up was not ready within {GIVE_UP_S:g} s")
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(timeout=60)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine_root = Path(tmp) / "engine"
        ensure_samples(EngineSettings(_env_file=None, storage_root=engine_root))  # type: ignore[call-arg]
        times = [ready_after(Path(tmp) / f"bridge{i}", engine_root) for i in range(REPEATS)]
    median = statistics.median(times)
    verdict = "MET" if median <= TARGET_S else "MISSED"
    print(f"bridge up benchmark on {os.cpu_count()} cores")
    print(f"  ready after (s)                      {median:6.2f}   median of {REPEATS}: "
          f"{', '.join(f'{t:.2f}' for t in times)}; target <= {TARGET_S:g} s  {verdict}")


if __name__ == "__main__":
    main()
