"""``python -m tests.standins.render_gate worker``: a real bridge worker whose renders a test can hold mid-render.

A test that must act while a render is under way (watch its progress, kill its worker, cut its database)
otherwise races the renderer: however long the sentence, a fast enough machine finishes before the test
looks. With the gate armed, a render that reaches the lip-sync stage writes that stage to the job table at
once (the worker's own progress writes are throttled, so a quick render could pass through it unrecorded)
and then waits until the test opens the gate. Nothing is timed: the test decides when the render goes on.
Without ``RENDER_GATE_DIR``, or with the gate not armed, the worker is exactly ``python -m bridge worker``.

The gate is a directory both sides see (the worker may run in another network namespace): ``armed`` holds
the token of the current arming, and ``open/<token>`` lets that arming's renders go on. A fresh token per
arming means a render held by an earlier test never waits on a later one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "RENDER_GATE_DIR"
HOLD_STAGE = "lipsync"
POLL_S = 0.05

Progress = Callable[[str, float], None]
log = logging.getLogger("tests.render_gate")


@dataclass(frozen=True)
class Arming:
    """One arming of the gate: the renders it holds go on when it opens."""

    directory: Path
    token: str

    def disarm(self) -> None:
        """Renders that reach lip-sync from now on go straight through (a retry after a kill, say); those
        already held stay held until the gate opens."""
        with contextlib.suppress(FileNotFoundError):
            if (self.directory / "armed").read_text() == self.token:
                (self.directory / "armed").unlink()

    def open(self) -> None:
        (self.directory / "open" / self.token).touch()


@dataclass(frozen=True)
class RenderGate:
    directory: Path

    @property
    def env(self) -> dict[str, str]:
        """What a worker's environment needs to obey this gate."""
        return {ENV: str(self.directory)}

    @contextlib.contextmanager
    def armed(self) -> Iterator[Arming]:
        """Hold every render that reaches lip-sync inside the block; the gate opens when the block ends, so no
        render stays held after a failed test."""
        arming = Arming(self.directory, secrets.token_hex(8))
        (self.directory / "open").mkdir(parents=True, exist_ok=True)
        staged = self.directory / f"armed.{arming.token}"
        staged.write_text(arming.token)
        staged.replace(self.directory / "armed")  # atomic: a worker reads a whole token or none
        try:
            yield arming
        finally:
            arming.disarm()
            arming.open()


def hold_at_lipsync(directory: Path, job_id: str, save: Progress, progress: Progress) -> Progress:
    """``progress``, except that the render's first lip-sync report, while the gate is armed, is saved at once
    and then waits for the gate to open."""
    reached = False

    def gated(stage: str, fraction: float) -> None:
        nonlocal reached
        if stage == HOLD_STAGE and not reached:
            reached = True
            token = _armed_token(directory)
            if token is not None:
                save(stage, fraction)
                log.info("job %s held at %s by the test's gate", job_id, stage)
                while not (directory / "open" / token).exists():
                    time.sleep(POLL_S)
                log.info("job %s let go by the test's gate", job_id)
        progress(stage, fraction)

    return gated


def _armed_token(directory: Path) -> str | None:
    try:
        return (directory / "armed").read_text()
    except FileNotFoundError:
        return None


class _GatedEngine:
    """The worker's engine, with each render's progress callback passed through the gate."""

    def __init__(self, engine: Any, directory: Path, job_id: str, save: Progress) -> None:
        self._engine, self._directory, self._job_id, self._save = engine, directory, job_id, save

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def render(self, request: Any, progress: Progress) -> Any:
        return self._engine.render(request, hold_at_lipsync(self._directory, self._job_id, self._save, progress))


def install(directory: Path) -> None:
    """Route every render job of this worker (and of the children it forks) through the gate."""
    from bridge import tasks

    render = tasks.JobRunner._render

    def gated_render(self: tasks.JobRunner, db: Any, engine: Any, job: Any, attempt: int, *rest: Any) -> Any:
        def save(stage: str, fraction: float) -> None:
            tasks.save_progress(db, job.id, attempt, stage, fraction)

        return render(self, db, _GatedEngine(engine, directory, job.id, save), job, attempt, *rest)

    tasks.JobRunner._render = gated_render  # type: ignore[method-assign]


if __name__ == "__main__":
    from bridge import cli

    if os.environ.get(ENV):
        install(Path(os.environ[ENV]))
    sys.exit(cli.main(sys.argv[1:]))
