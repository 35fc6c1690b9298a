"""The one resident engine of this ComfyUI process, and the glue every node shares with it.

ComfyUI imports a node pack once and runs prompts in the same process, so the engine (TTS voices, face
models, avatar store) is created on first use and kept: a second render pays no start-up cost.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths

from engine import Engine, EngineError, EngineSettings

CATEGORY = "Talking Head (lip sync)"
"""One category, named so that a node search for "talking head" or "lip sync" finds every node."""

_STAGES = {"tts": (0.0, 0.05), "avatar": (0.05, 0.15), "lipsync": (0.15, 0.95), "encode": (0.95, 1.0),
           "done": (1.0, 1.0)}
_engine: Engine | None = None


def storage_root() -> Path:
    """Where saved avatars live: ``$ENGINE_STORAGE_ROOT`` when set (share the server's store), else a folder
    under ComfyUI's models directory, so a plain ComfyUI install needs no configuration."""
    configured = os.environ.get("ENGINE_STORAGE_ROOT")
    return Path(configured) if configured else Path(folder_paths.models_dir) / "talking_head"


def engine() -> Engine:
    """The process-wide engine, created once."""
    global _engine
    if _engine is None:
        _engine = Engine(EngineSettings(storage_root=storage_root()))
    return _engine


def work_dir() -> Path:
    """ComfyUI's temp folder (emptied at start-up) holds renders until Save Video copies them out."""
    path = Path(folder_paths.get_temp_directory()) / "talking_head"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fresh_path(suffix: str) -> Path:
    return work_dir() / f"{uuid.uuid4().hex}{suffix}"


def progress(node_id: str | None) -> Callable[[str, float], None]:
    """An engine progress callback that drives ComfyUI's progress bar and honours the Stop button.

    The engine calls it between frames, also from its prefetch thread; raising there unwinds the render
    (the engine re-raises it in the caller), so Stop takes effect within a frame or two.
    """
    bar = comfy.utils.ProgressBar(1000, node_id=node_id)
    shown = {"value": -1}

    def report(stage: str, fraction: float) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        low, high = _STAGES.get(stage, (0.0, 1.0))
        value = round(1000 * (low + (high - low) * max(0.0, min(1.0, fraction))))
        if value > shown["value"]:
            shown["value"] = value
            bar.update_absolute(value)

    return report


class NodeError(RuntimeError):
    """A failure that names the node and what the user can do about it; ComfyUI shows the message as is."""

    def __init__(self, node: str, problem: str, fix: str) -> None:
        super().__init__(f"{node}: {problem}. Fix: {fix}")


def explain(node: str, err: EngineError) -> NodeError:
    """An engine error re-worded for a ComfyUI user: which node, what went wrong, what to change."""
    fixes = {
        "no_face": "choose a photo or video with one clearly visible, front-facing face, or gate the render "
                   "with Talking Head Face Check",
        "face_too_small": "use a larger photo or crop closer to the face",
        "unknown_voice": "pick another voice, or set language to auto",
        "unknown_avatar": "pick a saved avatar from the list, or connect an image",
        "invalid_text": "change the text (it must have something to say, and not be too long)",
        "media_too_long": "use a shorter text, recording or template video",
        "unsupported_media": "use a photo (.png .jpg .webp) or video (.mp4 .mov .webm .mkv) from the input folder",
        "corrupt_media": "re-export the file; it could not be decoded",
    }
    return NodeError(node, str(err), fixes.get(err.code, "check the node's inputs"))
