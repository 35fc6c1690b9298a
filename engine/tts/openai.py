"""Client for OpenAI-compatible ``/v1/audio/speech`` servers (OpenAI, Kokoro-FastAPI, fish-speech, ...).

This is how users plug in a better voice than eSpeak without the engine shipping any weights.
Such servers return audio only, so the ``Speech`` has no timings and the renderer works from audio.
``post_for_audio`` is shared with the HeyGem client: both are "POST JSON, get audio bytes back".
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
import requests

from ..errors import BackendFailed, BackendUnavailable, CorruptMedia
from ..settings import EngineSettings
from ._decode import decode_audio
from .base import Speech, SynthesisRequest, TTSBackend, Voice
from .names import is_server_voice, server_voice

log = logging.getLogger(__name__)

_MESSAGE_LIMIT = 300
_KOKORO_ID = re.compile(r"^([a-z])[fm]_")
_KOKORO_LANGS = {"a": "en-us", "b": "en-gb", "z": "cmn", "j": "ja", "e": "es", "f": "fr", "h": "hi",
                 "i": "it", "p": "pt-br"}


def post_for_audio(url: str, payload: dict[str, Any], *, headers: dict[str, str], timeout_s: float,
                   service: str) -> Speech:
    """POST ``payload`` as JSON and decode the audio reply, mapping every failure to an ``EngineError``."""
    try:
        resp = requests.post(url, json=payload, headers=headers, timeout=timeout_s)
    except requests.Timeout as exc:
        raise BackendUnavailable(f"{service} at {url} did not answer within {timeout_s:g} s") from exc
    except requests.RequestException as exc:
        raise BackendUnavailable(f"cannot reach {service} at {url}: {type(exc).__name__}") from exc
    if resp.status_code >= 400:
        raise BackendFailed(f"{service} at {url} answered HTTP {resp.status_code}: {server_message(resp)}")
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype.startswith(("application/json", "text/")):
        raise BackendFailed(f"{service} at {url} sent {ctype} instead of audio: {server_message(resp)}")
    try:
        samples, rate = decode_audio(resp.content)
    except CorruptMedia as exc:
        raise BackendFailed(f"{service} at {url} sent something that is not audio: {exc}") from exc
    return Speech(samples=samples, sample_rate=rate)


def server_message(resp: requests.Response) -> str:
    """The human part of an error body: OpenAI ``error.message``, FastAPI ``detail``, or the text."""
    text = resp.content[:4096].decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        for candidate in (err.get("message") if isinstance(err, dict) else err,
                          body.get("detail"), body.get("message"), body.get("msg")):
            if candidate:
                text = candidate if isinstance(candidate, str) else json.dumps(candidate, ensure_ascii=False)
                break
    text = " ".join(text.split()) or resp.reason or "no message"
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


class OpenAITTSBackend(TTSBackend):
    """``POST {openai_tts_url}/v1/audio/speech`` asking for WAV; other formats are decoded too."""

    name = "openai"

    def __init__(self, settings: EngineSettings) -> None:
        if not settings.openai_tts_url:
            raise BackendUnavailable(
                "the openai TTS backend needs a server: set ENGINE_OPENAI_TTS_URL (e.g. http://host:8880)",
                field="tts_backend",
            )
        self.base_url = settings.openai_tts_url.rstrip("/")
        self._key = settings.openai_tts_key.get_secret_value() if settings.openai_tts_key else ""
        self._model = settings.openai_tts_model
        self._voice = settings.openai_tts_voice
        self._timeout = settings.http_timeout_s

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def synthesize(self, request: SynthesisRequest) -> Speech:
        payload = {
            "model": self._model,
            "input": request.text,
            "voice": server_voice(request.voice) if request.voice else self._voice,
            "response_format": "wav",
            "speed": float(np.clip(request.speed, 0.25, 4.0)),
        }
        return post_for_audio(f"{self.base_url}/v1/audio/speech", payload, headers=self._headers(),
                              timeout_s=self._timeout, service="OpenAI-compatible TTS server")

    def speaker(self, request: SynthesisRequest) -> Voice | None:
        """Named without asking the server (its voice list costs a request)."""
        vid = request.voice or self._voice
        return Voice(id=vid, name=vid, languages=_languages(vid), backend=self.name)

    def voices(self) -> list[Voice]:
        """The configured voice, plus the server's list where it has one (Kokoro-FastAPI does)."""
        ids = [self._voice]
        for vid in self._server_voice_ids():
            if vid not in ids:
                ids.append(vid)
        return [Voice(id=v, name=v, languages=_languages(v), backend=self.name) for v in ids]

    def _server_voice_ids(self) -> list[str]:
        url = f"{self.base_url}/v1/audio/voices"
        try:
            resp = requests.get(url, headers=self._headers(), timeout=min(self._timeout, 5.0))
            body = resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            log.debug("no voice list at %s", url)
            return []
        items = body.get("voices", []) if isinstance(body, dict) else body
        if not isinstance(items, list):
            return []
        ids = []
        for item in items:
            vid = (item.get("id") or item.get("name")) if isinstance(item, dict) else item
            if is_server_voice(vid):  # an id with a path in it could never be asked for
                ids.append(vid)
        return ids


def _languages(voice_id: str) -> tuple[str, ...]:
    """Kokoro ids start with a language letter (``zf_xiaobei``); otherwise the language is unknown."""
    match = _KOKORO_ID.match(voice_id)
    lang = _KOKORO_LANGS.get(match.group(1)) if match else None
    return (lang,) if lang else ()
