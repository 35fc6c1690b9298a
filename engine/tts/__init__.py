"""TTS backends by name. ``get_backend`` caches instances so a worker loads each model once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

from ..errors import BackendUnavailable, EngineError
from ..settings import EngineSettings
from .base import Phoneme, Speech, SynthesisRequest, TTSBackend, Voice, Word

__all__ = [
    "BACKENDS",
    "Phoneme",
    "Speech",
    "SynthesisRequest",
    "TTSBackend",
    "Voice",
    "Word",
    "get_backend",
    "list_voices",
]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("espeak", "piper", "openai", "heygem")

# The settings each backend reads: a change to any of them gives a fresh instance, not a stale one.
_SETTINGS_USED: dict[str, tuple[str, ...]] = {
    "espeak": (),
    "piper": ("piper_voice", "device"),
    "openai": ("openai_tts_url", "openai_tts_key", "openai_tts_model", "openai_tts_voice", "http_timeout_s"),
    "heygem": ("heygem_tts_url", "heygem_tts_speaker", "heygem_tts_reference_audio",
               "heygem_tts_reference_text", "http_timeout_s"),
}

_cache: dict[tuple[str, Hashable], TTSBackend] = {}
_cache_lock = threading.Lock()


def _factory(name: str) -> Callable[[EngineSettings], TTSBackend]:
    """Imports stay lazy so an unused optional backend costs nothing at start-up."""
    if name == "espeak":
        from .espeak import EspeakBackend

        return lambda _settings: EspeakBackend()
    if name == "piper":
        from .piper import PiperBackend

        return PiperBackend
    if name == "openai":
        from .openai import OpenAITTSBackend

        return OpenAITTSBackend
    from .heygem import HeyGemTTSBackend

    return HeyGemTTSBackend


def get_backend(settings: EngineSettings, name: str | None = None) -> TTSBackend:
    """The backend ``name`` (default ``settings.tts_backend``), built once per distinct configuration."""
    name = (name or settings.tts_backend).strip().lower()
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown TTS backend {name!r}; choose one of {', '.join(BACKENDS)}",
                                 field="tts_backend")
    key = (name, tuple(getattr(settings, field) for field in _SETTINGS_USED[name]))
    with _cache_lock:
        backend = _cache.get(key)
        if backend is None:
            backend = _factory(name)(settings)
            _cache[key] = backend
        return backend


def list_voices(settings: EngineSettings) -> list[Voice]:
    """Voices of every usable backend: espeak always, piper when installed, servers when configured."""
    voices = list(get_backend(settings, "espeak").voices())
    wanted = ["piper"]
    if settings.openai_tts_url:
        wanted.append("openai")
    if settings.heygem_tts_url:
        wanted.append("heygem")
    for name in wanted:
        try:
            voices += get_backend(settings, name).voices()
        except EngineError as exc:
            log.info("TTS backend %s is not usable: %s", name, exc)
    return voices
