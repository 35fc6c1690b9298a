"""The renderer interface: a renderer turns a template plus speech into the output frames, in order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..frames import Region
from ..settings import EngineSettings
from ..template import Template
from ..tts.base import Speech

ProgressFn = Callable[[str, float], None]


def _no_progress(stage: str, fraction: float) -> None:
    return None


@dataclass
class RenderContext:
    """Everything a renderer may use. ``speech`` already includes the lead-in/out silence.

    ``audio_path`` is that same padded speech as a 16-bit mono WAV, for renderers that hand
    audio to another program. The output has exactly ``n_frames`` frames at ``fps``.
    """

    template: Template
    speech: Speech
    audio_path: Path
    fps: float
    n_frames: int
    settings: EngineSettings
    workdir: Path
    progress: ProgressFn = _no_progress


class Renderer(ABC):
    """Loaded once per process (models stay resident); ``frames`` is called once per render."""

    name: str = ""

    def region(self, ctx: RenderContext) -> Region | None:
        """A fixed region outside which this renderer changes no pixel of any frame, if it has one.

        The encoder then decodes the template itself and lays the renderer's patches over it, so
        only the region crosses the pipe and everything else stays exactly as the template has it.
        """
        return None

    @abstractmethod
    def frames(self, ctx: RenderContext, region: Region | None = None) -> Iterator[np.ndarray]:
        """Yield exactly ``ctx.n_frames`` I420 frames (see ``engine.frames``) of the template's size,
        or of ``region`` when the pipeline passes the one ``region()`` returned."""
