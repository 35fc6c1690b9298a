"""Loads a UI-format workflow into a running ComfyUI in headless Chromium and saves a PNG of the canvas.

Run with .venv-comfyui's Python (it has aiohttp): Chromium is driven over its DevTools protocol, so no
driver binary or browser download is needed. Usage: comfyui_screenshot.py URL WORKFLOW.json OUT.png
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
WIDTH, HEIGHT = 1600, 1000


def zoom(workflow: dict) -> float:
    """Fits the graph into the window, but not below the zoom at which LiteGraph stops drawing text."""
    right = max(n["pos"][0] + n["size"][0] for n in workflow["nodes"])
    bottom = max(n["pos"][1] + n["size"][1] for n in workflow["nodes"])
    return round(max(0.62, min(1.0, (WIDTH - 140) / right, (HEIGHT - 160) / bottom)), 3)


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: object) -> dict:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}…: {result['exceptionDetails']}")
        return result["result"].get("value")


async def shoot(port: int, url: str, workflow: dict, out: Path) -> None:
    async with aiohttp.ClientSession() as session:
        # A fresh user gets the template gallery over the canvas on first load; mark the tour as done.
        async with session.post(f"{url}/settings/Comfy.TutorialCompleted", json=True) as response:
            response.raise_for_status()
        deadline = time.monotonic() + 60
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = [t for t in await response.json() if t["type"] == "page"]
                if targets:
                    break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium's DevTools endpoint did not come up")
            await asyncio.sleep(0.5)
        async with session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.navigate", url=url)
            deadline = time.monotonic() + 120
            while not await page.evaluate("Boolean(window.app && window.app.graph && window.app.canvas)"):
                if time.monotonic() > deadline:
                    raise RuntimeError("ComfyUI's front end did not load")
                await asyncio.sleep(1)
            await asyncio.sleep(2)
            await page.evaluate(f"window.app.loadGraphData({json.dumps(workflow)})")
            await asyncio.sleep(2)
            await page.evaluate(f"(() => {{ const ds = window.app.canvas.ds; ds.scale = {zoom(workflow)}; "
                                "ds.offset = [40, 20]; window.app.canvas.setDirty(true, true); })()")
            await asyncio.sleep(2)
            count = await page.evaluate("window.app.graph._nodes.length")
            if count != len(workflow["nodes"]):
                raise RuntimeError(f"the canvas shows {count} nodes, the workflow has {len(workflow['nodes'])}")
            shot = await page.call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))


def main(url: str, workflow_path: str, out: str) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-")
    port = 9300 + int(time.time()) % 500
    browser = subprocess.Popen(["chromium", *FLAGS, f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={profile}",
                                f"--remote-debugging-port={port}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(shoot(port, url, json.loads(Path(workflow_path).read_text()), Path(out)))
    finally:
        browser.terminate()
        browser.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
