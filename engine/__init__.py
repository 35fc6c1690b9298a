"""Talking-head engine: text or audio + a face → a lip-synced H.264 MP4, on a plain CPU."""

from .errors import EngineError
from .render import Engine, RenderRequest, RenderResult, render
from .settings import EngineSettings

__all__ = ["Engine", "EngineError", "EngineSettings", "RenderRequest", "RenderResult", "render"]
