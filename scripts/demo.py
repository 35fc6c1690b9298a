"""`make demo`: the sample avatar says a sentence, asked for the way Dify asks.

Starts `python -m bridge up` (local Redis, one worker, the API) and creates a fresh API key; then
starts the Dify plugin (`python -m main`, Python 3.12, the real SDK) and speaks the plugin daemon's
stdio protocol to it: validate the credentials, invoke `text_to_video`, reassemble the returned file.
Says which bridge it talks to (the one it started: its URL, pid and logs), prints the link and the saved MP4
path, and stops everything again. A port already taken (by a bridge left running, say) is reported before
anything starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bridge.keys import KeyStore  # noqa: E402
from bridge.ports import bind_error  # noqa: E402
from bridge.settings import BridgeSettings  # noqa: E402
from scripts.dify_daemon import PluginProcess  # noqa: E402

DEADLINE_S = 300.0


def _start_stack(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m bridge up`, and the base URL it announced once ready (its own API, never another program's)."""
    with log.open("wb") as out:
        stack = subprocess.Popen([sys.executable, "-m", "bridge", "up"], cwd=REPO, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise SystemExit(f"the bridge did not start:\n{log.read_text(errors='replace')[-3000:]}")
        announced = re.search(r"^bridge up on (\S+)", log.read_text(errors="replace"), re.MULTILINE)
        if announced:
            return stack, announced.group(1)
        time.sleep(0.3)
    os.killpg(stack.pid, signal.SIGINT)
    raise SystemExit(f"the bridge was not ready in time; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", required=True)
    parser.add_argument("--avatar", default="astronaut")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo.mp4")
    args = parser.parse_args()

    settings = BridgeSettings()
    if taken := bind_error(settings.host, settings.port):
        raise SystemExit(f"make demo starts its own bridge, but {taken}")
    log = settings.storage_root / "logs" / "demo-bridge.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stack, base = _start_stack(log)
    print(f"bridge: {base}, started by this demo (python -m bridge up, pid {stack.pid}; storage "
          f"{settings.storage_root}; log {log})", file=sys.stderr)
    store = KeyStore(settings.keys_path)
    api_key = store.create()
    kid = api_key.split("_")[1]
    credentials = {"bridge_url": base, "api_key": api_key}
    try:
        with PluginProcess() as plugin:
            checked = plugin.validate(credentials)
            if checked.error is not None:
                raise SystemExit(f"the plugin refused the credentials: {checked.error['message']}")
            print("plugin: credentials accepted; invoking text_to_video", file=sys.stderr)
            reply = plugin.invoke("text_to_video", {"text": args.text, "avatar": args.avatar, "subtitles": True},
                                  credentials, user_id="demo-user", timeout_s=DEADLINE_S)
        for log in reply.logs:
            print(f"  {log['label']}", file=sys.stderr)
        if reply.error is not None:
            raise SystemExit(f"the tool failed: {reply.error['message']}")
        if not reply.blobs:
            raise SystemExit("the tool returned no video file: " + " ".join(reply.texts))
        video, meta = reply.blobs[0]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(video)
        link = reply.variables["video_url"]
        job = reply.jsons[0]
        output = job["outputs"][0]
        print(f"link (valid until {output['expires_at']}): {link.split('?')[0]}?…")  # never the signature
        print(f"{args.out}  ({output['duration_s']:.2f} s, {output['width']}x{output['height']}, "
              f"{len(video) / 1e6:.1f} MB, {meta['mime_type']})")
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
