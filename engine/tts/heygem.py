"""Client for HeyGem's voice-clone TTS (the fish-speech container on port 18180).

The payload copies what Duix.Heygem's own client sends (``src/main/service/voice.js``), because
that container is only tested with those values. The voice is chosen by the reference clip and
its transcript, both obtained once from the service's ``/v1/preprocess_and_tran``.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..errors import BackendUnavailable, UnknownVoice
from ..settings import EngineSettings
from .base import Speech, SynthesisRequest, TTSBackend, Voice
from .openai import post_for_audio

DEFAULT_VOICE_ID = "reference"


class HeyGemTTSBackend(TTSBackend):
    """``POST {heygem_tts_url}/v1/invoke``; the reply body is WAV. Speed is not supported by the service."""

    name = "heygem"

    def __init__(self, settings: EngineSettings) -> None:
        if not settings.heygem_tts_url:
            raise BackendUnavailable(
                "the heygem TTS backend needs its service: set ENGINE_HEYGEM_TTS_URL (e.g. http://host:18180)",
                field="tts_backend",
            )
        self.base_url = settings.heygem_tts_url.rstrip("/")
        self._speaker = settings.heygem_tts_speaker
        self._reference_audio = settings.heygem_tts_reference_audio
        self._reference_text = settings.heygem_tts_reference_text
        self._timeout = settings.http_timeout_s
        self._timeout_per_char = settings.heygem_tts_timeout_per_char_s

    @property
    def voice_id(self) -> str:
        return self._speaker or DEFAULT_VOICE_ID

    def timeout_for(self, text: str) -> float:
        """fish-speech answers only once the whole WAV is made, which grows with the text."""
        return self._timeout + self._timeout_per_char * len(text)

    def payload(self, text: str) -> dict[str, Any]:
        """The exact JSON HeyGem's client sends (``voice.js:50-65``).

        ``speaker`` is a fresh UUID per call there too (``voice.js:47,51``) unless the admin fixes one.
        ``is_norm`` is 1, as the client sends it since its commit cb5ff42 ("to fix a Korean error");
        the 0 in HeyGem's README is outdated.
        """
        if not self._reference_audio or not self._reference_text:
            raise BackendUnavailable(
                "HeyGem TTS clones a reference voice: set ENGINE_HEYGEM_TTS_REFERENCE_AUDIO (the "
                "asr_format_audio_url) and ENGINE_HEYGEM_TTS_REFERENCE_TEXT (the reference_audio_text) "
                "returned by POST /v1/preprocess_and_tran",
                field="voice",
            )
        return {
            "speaker": self._speaker or str(uuid.uuid4()),
            "text": text,
            "format": "wav",
            "topP": 0.7,
            "max_new_tokens": 1024,
            "chunk_length": 100,
            "repetition_penalty": 1.2,
            "temperature": 0.7,
            "need_asr": False,
            "streaming": False,
            "is_fixed_seed": 0,
            "is_norm": 1,
            "reference_audio": self._reference_audio,
            "reference_text": self._reference_text,
        }

    def synthesize(self, request: SynthesisRequest) -> Speech:
        if request.voice and request.voice != self.voice_id:
            raise UnknownVoice(
                f"HeyGem TTS has one voice, {self.voice_id!r} (its reference clip); got {request.voice!r}"
            )
        return post_for_audio(f"{self.base_url}/v1/invoke", self.payload(request.text), headers={},
                              timeout_s=self.timeout_for(request.text), service="HeyGem TTS")

    def voices(self) -> list[Voice]:
        name = "HeyGem cloned voice"
        return [Voice(id=self.voice_id, name=name, languages=("cmn", "en"), backend=self.name)]
