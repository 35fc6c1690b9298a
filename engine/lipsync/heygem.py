"""Delegate the whole lip-sync to a running HeyGem (Duix.Heygem / Duix-Avatar) video service.

For users who already run HeyGem's ``heygem-gen-video`` container: we place the template video and
the speech WAV in HeyGem's shared ``face2face/temp`` folder (``/code/data/temp`` in the container),
submit a task, poll it, and decode ``<code>-r.mp4``. The HTTP calls live in ``heygem_client``, the
file handover in ``heygem_files``, the clean-up in ``heygem_cleanup``; this module decides when a task
is over and who may delete what.

File names are generated here from uuids, never from user input, and differ from the task ``code``
so they cannot collide with HeyGem's own ``<code>-t.mp4`` / ``<code>-r.mp4`` / ``<code>_format.*``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import BackendFailed, BackendStalled, BackendUnavailable, CorruptMedia
from ..frames import Region
from ..settings import EngineSettings
from ..video import read_frames
from . import heygem_cleanup as cleanup
from .base import RenderContext, Renderer
from .heygem_client import HeyGemClient, TaskState
from .heygem_files import SharedFolder, result_name
from .heygem_health import RESTART_HINT, clear_stall, record_stall

log = logging.getLogger(__name__)

__all__ = ["HeyGemRenderer", "result_name"]


class HeyGemRenderer(Renderer):
    """HeyGem does its own face detection and compositing; we only feed it files and read back frames."""

    name = "heygem"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        """At worker start-up, say what to fix in the shared folder before the first job trips on it."""
        if settings is not None and settings.heygem_data_dir is not None:
            problem = SharedFolder.from_settings(settings).problem()
            if problem is not None:
                log.error("HeyGem renderer: %s", problem)

    def frames(self, ctx: RenderContext, region: Region | None = None) -> Iterator[np.ndarray]:
        settings = ctx.settings
        if not settings.heygem_url:
            raise BackendUnavailable("the heygem renderer needs ENGINE_HEYGEM_URL (e.g. http://host:8383)")
        folder = SharedFolder.from_settings(settings)
        folder.check()
        cleanup.sweep(folder.path)
        return self._run(ctx, settings.heygem_url, folder)

    def _run(self, ctx: RenderContext, base_url: str, folder: SharedFolder) -> Iterator[np.ndarray]:
        settings = ctx.settings
        code = str(uuid.uuid4())
        token = uuid.uuid4().hex
        video_name, audio_name = f"engine-{token}.mp4", f"engine-{token}.wav"
        client = HeyGemClient(base_url, settings.http_timeout_s)
        accepted = finished = False
        try:
            ctx.progress("lipsync", 0.0)
            template = ctx.template
            # HeyGem keeps the template's frame rate, so cover the speech's duration at that rate.
            count = max(1, math.ceil(ctx.n_frames * template.fps / ctx.fps - 1e-6))
            template.materialize(count, folder.path / video_name)  # writes a temp name, then renames
            folder.place_speech(ctx.audio_path, audio_name, settings.heygem_audio_rate)
            deadline = time.monotonic() + settings.heygem_timeout_s
            payload = {"audio_url": folder.reference(audio_name), "video_url": folder.reference(video_name),
                       "code": code, "chaofen": 0, "watermark_switch": 0, "pn": 1}
            try:
                client.submit(payload, deadline, settings.heygem_poll_s, settings.heygem_timeout_s)
            except BackendUnavailable:
                accepted = True  # the submit may have arrived; its inputs may be read
                raise
            accepted = True
            state = _wait(client, code, deadline, settings, ctx, folder.path)
            finished = True
            clear_stall(folder.path)
            if state.failed:
                raise BackendFailed(f"HeyGem failed: {state.msg}")
            path = folder.locate_result(code, state.result, settings.heygem_result_wait_s)
            try:
                decoded = read_frames(path, template.width, template.height, fps=ctx.fps, pix_fmt="yuv420p")
                with contextlib.closing(decoded):
                    yield from _exactly(decoded, ctx.n_frames, ctx.fps)
            except CorruptMedia as exc:
                raise BackendFailed(f"HeyGem's result could not be decoded: {exc}") from exc
            ctx.progress("lipsync", 1.0)
        finally:
            client.close()
            inputs = [video_name, audio_name]
            if accepted and not finished:
                log.warning("HeyGem task %s may still read its inputs; they stay until its result appears or "
                            "%g s pass", code, settings.heygem_grace_s)
                cleanup.defer(folder.path, code, inputs, settings.heygem_grace_s)
            else:
                cleanup.remove([folder.path / name for name in inputs] + cleanup.leftovers(folder.path, code))


def _wait(client: HeyGemClient, code: str, deadline: float, settings: EngineSettings, ctx: RenderContext,
          folder: Path) -> TaskState:
    """Poll until a terminal status (read once: HeyGem forgets the task after answering it)."""
    last_progress, moved_at = -1.0, time.monotonic()
    while True:
        state = client.query_retrying(code, settings.heygem_poll_retry_s, settings.heygem_poll_s)
        if state.done or state.failed:
            return state
        now = time.monotonic()
        if state.progress != last_progress:
            last_progress, moved_at = state.progress, now
            ctx.progress("lipsync", state.progress / 100.0)
        elif now - moved_at >= settings.heygem_stall_s:
            record_stall(folder, code, state.progress)
            raise BackendStalled(f"HeyGem's task {code} has been stuck at {state.progress:g}% for "
                                 f"{settings.heygem_stall_s:g} s (ENGINE_HEYGEM_STALL_S), and HeyGem answers "
                                 f"every new task with 'busy' until it ends: {RESTART_HINT}")
        remaining = deadline - now
        if remaining <= 0:
            raise BackendFailed(f"HeyGem did not finish within {settings.heygem_timeout_s:g} s "
                                f"(ENGINE_HEYGEM_TIMEOUT_S); its task {code} may still be running")
        client.sleep(min(settings.heygem_poll_s, remaining))


def _exactly(frames: Iterator[np.ndarray], n_frames: int, fps: float) -> Iterator[np.ndarray]:
    """Cut or pad (repeating the last frame) to ``n_frames``: HeyGem's output is a frame or two short."""
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
