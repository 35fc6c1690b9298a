"""GET /v1/voices: the voices jobs may ask for, from every TTS backend this bridge's engine can use."""

from __future__ import annotations

import threading
import time
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import List, Nested, String

from bridge.api.deps import SECURITY_SCHEME, require_token, state
from engine.tts import Voice, list_voices

bp = APIBlueprint("voices", __name__, tag="voices")
CACHE_S = 300.0
_cache: dict[tuple[str | None, ...], tuple[float, list[Voice]]] = {}
_lock = threading.Lock()


class VoiceOut(Schema):
    id = String(required=True, metadata={"description": "Pass as `voice` in POST /v1/jobs.", "example": "en-us"})
    name = String(required=True)
    languages = List(String(), required=True, metadata={"example": ["en-us", "en"]})
    backend = String(required=True, metadata={"example": "espeak"})


class VoicesOut(Schema):
    voices = List(Nested(VoiceOut), required=True)


def listed_voices() -> list[Voice]:
    """Listing asks TTS servers over HTTP, so keep the answer a few minutes (per engine configuration).

    This list is also what ``POST /v1/jobs`` accepts, so a job can only name a voice a client can see.
    """
    st = state()
    es = st.engine_settings
    key = (str(es.storage_root), es.piper_voice, es.openai_tts_url, es.openai_tts_voice, es.heygem_tts_url,
           es.heygem_tts_speaker)
    with _lock:
        hit = _cache.get(key)
        if hit is None or time.monotonic() - hit[0] > CACHE_S:
            hit = _cache[key] = (time.monotonic(), list(list_voices(st.engine_settings)))
    return hit[1]


def find_voice(voice_id: str) -> Voice | None:
    """The listed voice with exactly this id (the first backend's, should two backends share an id)."""
    return next((v for v in listed_voices() if v.id == voice_id), None)


def voice_backend(voice_id: str) -> str | None:
    """The TTS backend that has ``voice_id``; None for an unknown voice."""
    voice = find_voice(voice_id)
    return voice.backend if voice else None


@bp.get("/v1/voices")
@require_token("jobs:read")
@bp.output(VoicesOut, description="Every voice, grouped by TTS backend.")
@bp.doc(summary="List voices", security=SECURITY_SCHEME,
        responses={403: "The token lacks the jobs:read scope", 503: "Tokens cannot be verified right now"})
def voices() -> Any:
    return {"voices": [{"id": v.id, "name": v.name, "languages": list(v.languages), "backend": v.backend}
                       for v in listed_voices()]}
