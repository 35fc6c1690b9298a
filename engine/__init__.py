"""Talking-head engine: text or audio + a face → a lip-synced H.264 MP4, on a plain CPU.

Names are imported on first use, so a process that only needs settings or the avatar store (the
bridge's API) does not pay for the audio and rendering stack at start-up.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import EngineError
    from .render import Engine, RenderRequest, RenderResult, render
    from .settings import EngineSettings

__all__ = ["Engine", "EngineError", "EngineSettings", "RenderRequest", "RenderResult", "render"]
_HOMES = {"Engine": "render", "RenderRequest": "render", "RenderResult": "render", "render": "render",
          "EngineError": "errors", "EngineSettings": "settings"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
