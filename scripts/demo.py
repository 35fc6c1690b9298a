"""`make demo`: the sample avatar says a sentence, going through the bridge as a client would.

Starts `python -m bridge up` (local Redis, one worker, the API), creates an API key, submits a text
job with a per-call token, polls it, downloads the MP4, prints the link and the saved path, and
stops the stack again. Step 3 replaces the hand-written client with the Dify plugin over stdio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bridge.auth import mint_token  # noqa: E402
from bridge.keys import KeyStore  # noqa: E402
from bridge.settings import BridgeSettings  # noqa: E402

POLL_S = 1.0
DEADLINE_S = 300.0


def _start_stack(settings: BridgeSettings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        stack = subprocess.Popen([sys.executable, "-m", "bridge", "up"], cwd=REPO, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://{settings.host}:{settings.port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise SystemExit(f"the bridge did not start:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                return stack
        time.sleep(0.3)
    raise SystemExit(f"the bridge was not ready in time; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", required=True)
    parser.add_argument("--avatar", default="astronaut")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo.mp4")
    args = parser.parse_args()

    settings = BridgeSettings()
    base = f"http://{settings.host}:{settings.port}"
    store = KeyStore(settings.keys_path)
    api_key = store.create()
    kid = api_key.split("_")[1]
    log = settings.storage_root / "logs" / "demo-bridge.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stack = _start_stack(settings, log)
    try:
        def headers(*scopes: str) -> dict[str, str]:
            token = mint_token(api_key, "demo-user", list(scopes), settings.jwt_audience, settings.jwt_issuer)
            return {"Authorization": f"Bearer {token}"}

        reply = requests.post(f"{base}/v1/jobs", json={"text": args.text, "avatar_id": args.avatar,
                                                        "subtitles": True},
                              headers=headers("jobs:write"), timeout=30)
        if reply.status_code != 202:
            raise SystemExit(f"the bridge refused the job: {reply.status_code} {reply.text}")
        job_url = f"{base}{reply.headers['Location']}"
        print(f"job {reply.json()['id']} queued", file=sys.stderr)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            job = requests.get(job_url, headers=headers("jobs:read"), timeout=30).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the job did not finish in {DEADLINE_S:.0f} s")
            print(f"  {job['status']:9s} {job.get('stage') or '':8s} {job.get('progress', 0) * 100:3.0f}%",
                  file=sys.stderr)
            time.sleep(POLL_S)
        if job["status"] != "succeeded":
            raise SystemExit(f"the job {job['status']}: {job.get('error')}")
        link = job["outputs"][0]["video_url"]
        video = requests.get(link, timeout=60)
        if video.status_code != 200:  # never echo the signed link itself
            raise SystemExit(f"downloading the video failed: {video.status_code} {video.text[:300]}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(video.content)
        output = job["outputs"][0]
        print(f"link (valid until {output['expires_at']}): {link.split('?')[0]}?…")
        print(f"{args.out}  ({output['duration_s']:.2f} s, {output['width']}x{output['height']}, "
              f"{output['size_bytes'] / 1e6:.1f} MB)")
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.pid, signal.SIGINT)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
        store.revoke(kid)


if __name__ == "__main__":
    raise SystemExit(main())
