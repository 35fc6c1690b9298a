"""`make bench`, intake part: what refusing a lying file costs the bridge, and what decoding one costs a worker.

Issue #10: an hour of MP3 whose Xing/Info frame claims 16 frames (0.4 s). Before intake measured packets it was
accepted, and the worker decoded all of it (about 2 GiB at its peak).

1. The production server (`python -m bridge serve`: gunicorn, its default 2 processes × 8 threads) refuses that
   file, sent as a multipart upload and as an ``audio_url`` on an allow-listed loopback HTTP server. For each
   request: the status and code, the wall time, and how far the resident memory of every bridge process
   together (the gunicorn master, its workers and their ffprobe children) rose above what it was just before,
   sampled every few milliseconds (a child counts from its exec on: before that it shares its parent's pages).
   A warm-up request of the same kind comes first, so the figures are not imports done on first use. The
   kernel's high-water marks (VmHWM, reset through ``clear_refs`` before each request) of the long-lived
   processes are also summed: unlike sampling, they cannot miss a short peak of those processes.
2. The worker's audio decoder (``engine.audio.decode_audio`` at the render's 48 kHz) on the same file, each run
   in a fresh process: capped at ``ENGINE_MAX_AUDIO_S`` as the render does it now, and with no cap (what the
   worker did before). Peak RSS of the Python process (its VmHWM, reset just before decoding: ``ru_maxrss``
   would include the image it was forked from) and its growth, and of its ffprobe/ffmpeg children (sampled).

Run: `.venv/bin/python tests/bench/intake_bench.py`. MINUTES (default 60) sets the file's real length.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bridge.auth import mint_token  # noqa: E402
from bridge.keys import KeyStore  # noqa: E402
from bridge.settings import BridgeSettings  # noqa: E402
from engine import EngineSettings  # noqa: E402
from engine.samples import PHOTO_ID, ensure_samples  # noqa: E402
from tests.bridge_fixtures import free_port, run_bridge_serve, run_receiver, run_redis_server, worker_env  # noqa: E402
from tests.hostile_media import lying_mp3  # noqa: E402

MINUTES = int(os.environ.get("MINUTES", "60"))
SAMPLE_S = 0.005
EXECUTED = frozenset({"ffprobe", "prlimit"})
MIB = 1024 * 1024
AUD, ISS = BridgeSettings.model_fields["jwt_audience"].default, BridgeSettings.model_fields["jwt_issuer"].default
DECODE = """
import json, sys, threading, time
from pathlib import Path
import psutil
from engine.audio import decode_audio
from engine.errors import MediaTooLong
me = psutil.Process()
Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts here: ru_maxrss would include the parent's image
before, child_peak, done = me.memory_info().rss, 0, threading.Event()
def watch():  # ru_maxrss of children would count the forked copy of this process before exec
    global child_peak
    while not done.is_set():
        for child in me.children():
            try:
                if child.name() in ("ffmpeg", "ffprobe") or "ffmpeg" in child.exe():
                    child_peak = max(child_peak, child.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.005)
watcher = threading.Thread(target=watch)
watcher.start()
cap = None if sys.argv[2] == "none" else float(sys.argv[2])
try:
    outcome = f"{decode_audio(Path(sys.argv[1]), 48000, max_s=cap).size / 48000:.0f} s of samples"
except MediaTooLong:
    outcome = "media_too_long"
done.set()
watcher.join()
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "before": before, "self": int(hwm.split()[1]), "ffmpeg": child_peak // 1024}))
"""


def main() -> None:
    engine_root = Path(os.environ.get("ENGINE_STORAGE_ROOT", REPO / "var"))
    engine_settings = EngineSettings(storage_root=engine_root)
    ensure_samples(engine_settings)
    with tempfile.TemporaryDirectory(prefix="intake-bench-") as tmp:
        root = Path(tmp)
        files = root / "files"
        files.mkdir()
        started = time.perf_counter()
        mp3 = lying_mp3(files / "talk.mp3", minutes=MINUTES, rate=44100, bitrate="128k", channels=2)
        print(f"{mp3.name}: {mp3.stat().st_size / MIB:.1f} MiB, {MINUTES} min of 128 kb/s stereo MP3 whose Info frame "
              f"claims 16 frames (built in {time.perf_counter() - started:.1f} s)")
        with _stack(root, engine_root) as (base, key, serve_pid, receiver_base):
            _refusals(base, key, serve_pid, receiver_base, mp3)
        _decoder(mp3, engine_settings.max_audio_s)


@contextlib.contextmanager
def _stack(root: Path, engine_root: Path) -> Iterator[tuple[str, str, int, str]]:
    """redis-server, the file server and `bridge serve` (no render worker: nothing gets that far)."""
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(run_redis_server(root))
        receiver = stack.enter_context(run_receiver(root / "files"))
        port = free_port()
        settings = BridgeSettings(_env_file=None, storage_root=root / "bridge", redis_url=redis_server.url,
                                  min_free_bytes=0, port=port)  # type: ignore[call-arg]
        settings.storage_root.mkdir()
        key = KeyStore(settings.keys_path).create()
        env = worker_env(settings, engine_root, BRIDGE_PORT=str(port),
                         BRIDGE_FETCH_ALLOW_HTTP_HOSTS=f"127.0.0.1:{receiver.port}")
        base = stack.enter_context(run_bridge_serve(env, root / "serve.log", port=port))
        serve = next(p for p in psutil.Process().children() if p.cmdline()[-2:] == ["bridge", "serve"])
        yield base, key, serve.pid, receiver.base


def _refusals(base: str, key: str, serve_pid: int, receiver_base: str, mp3: Path) -> None:
    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(key, 'bench', ['jobs:read', 'jobs:write'], AUD, ISS)}"}

    def by_upload() -> requests.Response:
        with mp3.open("rb") as handle:
            return requests.post(f"{base}/v1/jobs", files={"audio": (mp3.name, handle)},
                                 data={"avatar_id": PHOTO_ID}, headers=headers(), timeout=300)

    def by_url() -> requests.Response:
        return requests.post(f"{base}/v1/jobs", json={"audio_url": f"{receiver_base}/{mp3.name}",
                                                      "avatar_id": PHOTO_ID}, headers=headers(), timeout=300)

    print(f"\nRefusing it at intake (bridge serve, all bridge processes together, sampled every "
          f"{SAMPLE_S * 1000:.0f} ms):")
    print(f"  {'how':<18} {'try':>3}  {'status':<22} {'seconds':>7}  {'peak growth MiB':>15}  "
          f"{'sum of VmHWM growth MiB':>23}")
    for label, send in (("multipart upload", by_upload), ("audio_url", by_url)):
        send()  # warm-up: first-use imports and connections
        for attempt in (1, 2):
            response, seconds, growth, hwm = _measure(serve_pid, send)
            body = response.json()
            status = f"{response.status_code} {body.get('code', body.get('status', ''))}"
            print(f"  {label:<18} {attempt:>3}  {status:<22} {seconds:7.2f}  {growth / MIB:15.1f}  {hwm / MIB:23.1f}")
    jobs = requests.get(f"{base}/v1/jobs", headers=headers(), timeout=30).json()["jobs"]
    print(f"  jobs created: {len(jobs)}")


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def _hwm(pid: int) -> int:
    """Peak RSS since the last reset (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _measure(serve_pid: int, send: Callable[[], requests.Response]) -> tuple[requests.Response, float, int, int]:
    """Send one request while sampling; (response, seconds, peak growth of the sum, sum of high-water growth).

    A child counts once it runs ffprobe: between fork and exec it is a copy of its gunicorn worker, whose pages
    it shares, and adding its RSS would count them twice.
    """
    long_lived = _tree(serve_pid)
    pids = {p.pid for p in long_lived}
    for process in long_lived:
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    baseline = _rss(long_lived)
    rss_before = {p.pid: p.memory_info().rss for p in long_lived}
    peak = baseline
    done = threading.Event()

    def counted(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return process.pid in pids or process.name() in EXECUTED
        return False

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss([p for p in _tree(serve_pid) if counted(p)]))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        response = send()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    hwm = sum(_hwm(pid) - before for pid, before in rss_before.items())
    return response, seconds, peak - baseline, hwm


def _decoder(mp3: Path, limit_s: float) -> None:
    print("\nThe worker's decoder on the same file (decode_audio at 48 kHz, a fresh process each):")
    print(f"  {'cap':<26} {'outcome':<26} {'seconds':>7}  {'python peak MiB':>15}  {'growth MiB':>10}  "
          f"{'ffmpeg peak MiB':>15}")
    for label, cap in ((f"max_s={limit_s:g} (now)", f"{limit_s:g}"), ("none (before)", "none")):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", DECODE, str(mp3), cap], capture_output=True, text=True,
                             cwd=REPO, check=True, timeout=900)
        seconds = time.perf_counter() - started
        result = json.loads(out.stdout)
        peak, ffmpeg = result["self"] * 1024, result["ffmpeg"] * 1024
        print(f"  {label:<26} {result['outcome']:<26} {seconds:7.2f}  {peak / MIB:15.1f}  "
              f"{(peak - result['before']) / MIB:10.1f}  {ffmpeg / MIB:15.1f}")


if __name__ == "__main__":
    main()
