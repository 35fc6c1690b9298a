"""GET /v1/voices: the voices jobs may ask for, from every TTS backend this bridge's engine can use."""

from __future__ import annotations

import threading
import time
from typing import Any

from apiflask import APIBlueprint, Schema
from apiflask.fields import List, Nested, String

from bridge.api.deps import SECURITY_SCHEME, require_token, state
from engine.tts import list_voices

bp = APIBlueprint("voices", __name__, tag="voices")
CACHE_S = 300.0
_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
_lock = threading.Lock()


class VoiceOut(Schema):
    id = String(required=True, metadata={"description": "Pass as `voice` in POST /v1/jobs.", "example": "en-us"})
    name = String(required=True)
    languages = List(String(), required=True, metadata={"example": ["en-us", "en"]})
    backend = String(required=True, metadata={"example": "espeak"})


class VoicesOut(Schema):
    voices = List(Nested(VoiceOut), required=True)


def _voices() -> list[dict[str, Any]]:
    """Listing asks TTS servers over HTTP, so keep the answer a few minutes (per storage root)."""
    st = state()
    key = str(st.engine_settings.storage_root)
    with _lock:
        hit = _cache.get(key)
        if hit is None or time.monotonic() - hit[0] > CACHE_S:
            voices = [{"id": v.id, "name": v.name, "languages": list(v.languages), "backend": v.backend}
                      for v in list_voices(st.engine_settings)]
            hit = _cache[key] = (time.monotonic(), voices)
    return hit[1]


def voice_backend(voice_id: str) -> str | None:
    """The TTS backend that has ``voice_id``; None for an unknown voice (the engine then says so)."""
    return next((v["backend"] for v in _voices() if v["id"] == voice_id), None)


@bp.get("/v1/voices")
@require_token("jobs:read")
@bp.output(VoicesOut, description="Every voice, grouped by TTS backend.")
@bp.doc(summary="List voices", security=SECURITY_SCHEME,
        responses={403: "The token lacks the jobs:read scope", 503: "Tokens cannot be verified right now"})
def voices() -> Any:
    return {"voices": _voices()}
