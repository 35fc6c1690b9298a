"""Register a reference voice with HeyGem's fish-speech service, for ``python -m engine heygem-voice``.

HeyGem clones a voice from a reference clip that its ``/v1/preprocess_and_tran`` has prepared once:
the reply names the prepared clip (``asr_format_audio_url``) and its transcript
(``reference_audio_text``), which every ``/v1/invoke`` then sends back as ``reference_audio`` and
``reference_text`` (HeyGem client ``voice.js:28-29``). Both are settings here, so the command prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import requests

from ..errors import BackendFailed, BackendUnavailable
from ..settings import EngineSettings
from .openai import server_message

PREPROCESS_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RegisteredVoice:
    reference_audio: str
    reference_text: str

    def env_lines(self) -> list[str]:
        return ["ENGINE_TTS_BACKEND=heygem", f"ENGINE_HEYGEM_TTS_REFERENCE_AUDIO={self.reference_audio}",
                f"ENGINE_HEYGEM_TTS_REFERENCE_TEXT={self.reference_text}"]


def register_voice(settings: EngineSettings, clip: str, lang: str = "zh") -> RegisteredVoice:
    """``clip``: the reference recording as the TTS container sees it (HeyGem's client passes a bare name)."""
    if not settings.heygem_tts_url:
        raise BackendUnavailable("set ENGINE_HEYGEM_TTS_URL (e.g. http://host:18180) first", field="tts_backend")
    url = f"{settings.heygem_tts_url.rstrip('/')}/v1/preprocess_and_tran"
    payload = {"format": PurePosixPath(clip).suffix.lstrip(".") or "wav", "reference_audio": clip, "lang": lang}
    try:
        reply = requests.post(url, json=payload, timeout=max(settings.http_timeout_s, PREPROCESS_TIMEOUT_S))
    except requests.RequestException as exc:
        raise BackendUnavailable(f"cannot reach HeyGem TTS at {url}: {type(exc).__name__}") from exc
    if reply.status_code >= 400:
        raise BackendFailed(f"HeyGem TTS at {url} answered HTTP {reply.status_code}: {server_message(reply)}")
    try:
        body = reply.json()
    except ValueError as exc:
        raise BackendFailed(f"HeyGem TTS at {url} did not answer JSON: {server_message(reply)}") from exc
    audio = body.get("asr_format_audio_url") if isinstance(body, dict) else None
    text = body.get("reference_audio_text") if isinstance(body, dict) else None
    if not audio or not text:
        raise BackendFailed(f"HeyGem TTS at {url} did not prepare {clip!r}: {str(body)[:300]}")
    return RegisteredVoice(reference_audio=str(audio), reference_text=str(text))
