"""Delegate the whole lip-sync to a running HeyGem (Duix.Heygem) video service.

For users who already run HeyGem's ``heygem-gen-video`` container: we place the template video and
the speech WAV in HeyGem's shared ``face2face/temp`` dir (``/code/data/temp`` in the container),
submit a task over its ``/easy/submit`` + ``/easy/query`` API, and decode ``<code>-r.mp4``.

Path convention: ``audio_url``/``video_url`` are the **bare file names** inside that dir, exactly
what HeyGem's own Electron client sends (it passes paths relative to ``face2face/temp`` and joins
``data.result`` back onto it). A bare name does not depend on where the dir is mounted in the
container. File names are generated here from uuids, never from user input, and differ from the
task ``code`` so they cannot collide with HeyGem's own ``<code>-t.mp4`` / ``<code>-r.mp4``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import requests

from ..errors import BackendFailed, BackendUnavailable, CorruptMedia
from ..frames import Region
from ..video import read_frames
from .base import RenderContext, Renderer

log = logging.getLogger(__name__)

CODE_OK, CODE_BUSY, CODE_NOT_FOUND = 10000, 10001, 10004
STATUS_RUNNING, STATUS_DONE, STATUS_FAILED = 1, 2, 3
MAX_BUSY_BACKOFF_S = 30.0


def result_name(code: str) -> str:
    return f"{code}-r.mp4"


def locate_result(data_dir: Path, code: str, result: str) -> Path:
    """The result file inside ``data_dir``; refuses anything but ``<code>-r.mp4`` in that dir.

    HeyGem reports a container path (``/code/data/temp/<code>-r.mp4``); only its base name is
    trusted, and only when it is the name this task must produce. An empty ``result`` means the
    documented name.
    """
    expected = result_name(code)
    name = PureWindowsPath(PurePosixPath(result).name).name if result else expected
    if name != expected:
        raise BackendFailed(f"HeyGem reported an unexpected result {result!r}; expected {expected}")
    root = data_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path.parent != root:
        raise BackendFailed(f"HeyGem's result {name} resolves outside ENGINE_HEYGEM_DATA_DIR")
    if not path.is_file():
        raise BackendFailed(f"HeyGem reported success but {name} is not in {data_dir}")
    return path


class HeyGemRenderer(Renderer):
    """HeyGem does its own face detection and compositing; we only feed it files and read back frames."""

    name = "heygem"

    def frames(self, ctx: RenderContext, region: Region | None = None) -> Iterator[np.ndarray]:
        settings = ctx.settings
        if not settings.heygem_url:
            raise BackendUnavailable("the heygem renderer needs ENGINE_HEYGEM_URL (e.g. http://host:8383)")
        if settings.heygem_data_dir is None:
            raise BackendUnavailable(
                "the heygem renderer needs ENGINE_HEYGEM_DATA_DIR (the host path of HeyGem's face2face/temp)")
        data_dir = Path(settings.heygem_data_dir)
        if not data_dir.is_dir():
            raise BackendUnavailable(f"ENGINE_HEYGEM_DATA_DIR {data_dir} is not a directory")
        return self._run(ctx, settings.heygem_url.rstrip("/"), data_dir)

    def _run(self, ctx: RenderContext, base_url: str, data_dir: Path) -> Iterator[np.ndarray]:
        settings = ctx.settings
        code = str(uuid.uuid4())
        token = uuid.uuid4().hex
        video_name, audio_name = f"engine-{token}.mp4", f"engine-{token}.wav"
        owned = [data_dir / video_name, data_dir / audio_name,
                 data_dir / result_name(code), data_dir / f"{code}-t.mp4"]
        client = _Client(base_url, settings.http_timeout_s)
        try:
            ctx.progress("lipsync", 0.0)
            template = ctx.template
            # HeyGem keeps the template's frame rate, so cover the speech's duration at that rate.
            count = max(1, math.ceil(ctx.n_frames * template.fps / ctx.fps - 1e-6))
            template.materialize(count, data_dir / video_name)  # writes a temp name, then renames
            _copy_atomic(ctx.audio_path, data_dir / audio_name)
            deadline = time.monotonic() + settings.heygem_timeout_s
            payload = {"audio_url": audio_name, "video_url": video_name, "code": code,
                       "chaofen": 0, "watermark_switch": 0, "pn": 1}
            client.submit(payload, deadline, settings.heygem_poll_s, settings.heygem_timeout_s)
            result = client.wait(code, deadline, settings.heygem_poll_s, settings.heygem_timeout_s, ctx)
            path = locate_result(data_dir, code, result)
            try:
                decoded = read_frames(path, template.width, template.height, fps=ctx.fps, pix_fmt="yuv420p")
                with contextlib.closing(decoded):
                    yield from _exactly(decoded, ctx.n_frames, ctx.fps)
            except CorruptMedia as exc:
                raise BackendFailed(f"HeyGem's result could not be decoded: {exc}") from exc
            ctx.progress("lipsync", 1.0)
        finally:
            client.close()
            for leftover in owned:
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not remove %s from the HeyGem data dir: %s", leftover.name, exc)


class _Client:
    """The two HTTP calls, with HeyGem's reply codes mapped onto engine errors."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url, where = f"{self.base_url}{path}", f"HeyGem at {self.base_url}"
        try:
            reply = self.session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError as exc:
            raise BackendUnavailable(f"{where} cannot be reached ({type(exc).__name__})") from exc
        except requests.Timeout as exc:
            raise BackendUnavailable(f"{where} did not answer within {self.timeout_s:g} s") from exc
        if reply.status_code != 200:
            raise BackendFailed(f"HeyGem {path} answered HTTP {reply.status_code}: {reply.text[:200]}")
        try:
            body = reply.json()
        except ValueError as exc:
            raise BackendFailed(f"HeyGem {path} did not answer JSON: {reply.text[:200]}") from exc
        if not isinstance(body, dict):
            raise BackendFailed(f"HeyGem {path} answered {body!r}")
        return body

    def submit(self, payload: dict[str, Any], deadline: float, poll_s: float, timeout_s: float) -> None:
        """Submit, retrying with backoff while HeyGem is busy (it runs one task at a time)."""
        backoff = poll_s
        while True:
            body = self._call("POST", "/easy/submit", json=payload)
            code = body.get("code")
            if code == CODE_OK:
                return
            if code != CODE_BUSY:
                raise BackendFailed(f"HeyGem refused the task ({code}): {body.get('msg') or 'no message'}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendFailed(f"HeyGem did not finish within {timeout_s:g} s (it stayed busy)")
            log.info("HeyGem is busy; retrying in %.1f s", backoff)
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, max(poll_s, MAX_BUSY_BACKOFF_S))

    def wait(self, code: str, deadline: float, poll_s: float, timeout_s: float, ctx: RenderContext) -> str:
        """Poll until a terminal status; HeyGem forgets the task once that is read, so read it once."""
        while True:
            body = self._call("GET", "/easy/query", params={"code": code})
            reply_code, msg = body.get("code"), body.get("msg") or "no message"
            if reply_code == CODE_NOT_FOUND:
                raise BackendFailed(f"HeyGem no longer knows task {code}: {msg}")
            if reply_code != CODE_OK:
                raise BackendFailed(f"HeyGem query failed ({reply_code}): {msg}")
            data = body.get("data") or {}
            status = data.get("status")
            if status == STATUS_DONE:
                return str(data.get("result") or "")
            if status == STATUS_FAILED:
                raise BackendFailed(f"HeyGem failed: {data.get('msg') or msg}")
            with contextlib.suppress(TypeError, ValueError):
                ctx.progress("lipsync", min(max(float(data.get("progress") or 0) / 100.0, 0.0), 1.0))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendFailed(f"HeyGem did not finish within {timeout_s:g} s")
            time.sleep(min(poll_s, remaining))


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _exactly(frames: Iterator[np.ndarray], n_frames: int, fps: float) -> Iterator[np.ndarray]:
    """Cut or pad (repeating the last frame) to ``n_frames``; a big shortfall means a broken result."""
    last: np.ndarray | None = None
    produced = 0
    for frame in frames:
        if produced >= n_frames:
            break
        yield frame
        last, produced = frame, produced + 1
    missing = n_frames - produced
    if missing == 0:
        return
    tolerance = max(5, round(fps))
    if last is None or missing > tolerance:
        raise BackendFailed(f"HeyGem's result has {produced} frames; expected {n_frames}")
    for _ in range(missing):
        yield last
