"""Intake checks on what a job will say and what renders it: ``text``, ``voice``, ``lang`` and ``renderer``.

Each of these used to pass intake and fail later on a worker (or, for ``lang: "../"``, crash it inside
libespeak-ng). They are refused here with a 422 naming the field, using the engine's own rules
(``engine.text``, ``engine.tts.languages``, ``engine.lipsync.readiness``) so both ends agree; the
engine checks again for jobs that never came through this API.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from marshmallow import ValidationError

from bridge.api.deps import state
from bridge.api.intake import refused
from bridge.api.voices import find_voice, listed_voices
from bridge.problems import invalid
from engine.errors import EngineError
from engine.lipsync.readiness import missing_setup
from engine.text import TAG_HINT, detect_lang, language_tag, speakable_text
from engine.tts import Voice
from engine.tts.languages import speaks
from engine.tts.names import MAX_NAME_LENGTH

VOICES = "GET /v1/voices"


def _not_a_tag(lang: str) -> str:
    return f"{lang[:40]!r} is not a language tag: use {TAG_HINT}; {VOICES} lists the languages the voices speak"


def _no_voice(voice: str) -> str:
    return f"there is no voice {voice[:64]!r}; {VOICES} lists the ids you can use"


def check_lang(value: str) -> None:
    """``JobIn.lang``'s validator: the tag's shape, with the message the submit check gives."""
    try:
        if not value:
            raise ValueError(value)
        language_tag(value)
    except (EngineError, ValueError) as err:
        raise ValidationError(_not_a_tag(value)) from err


def check_voice(value: str) -> None:
    """``JobIn.voice``'s validator: no listed id is empty or longer than ``MAX_NAME_LENGTH``."""
    if not 0 < len(value) <= MAX_NAME_LENGTH:
        raise ValidationError(_no_voice(value))


def speech_problem(body: dict[str, Any]) -> Response | None:
    """None when the job's text, voice, language and renderer can be used here; else the first 422."""
    if body["text"] is not None:
        try:
            speakable_text(body["text"])
        except EngineError as err:
            return refused(err)
    voice = None
    if body["voice"] is not None:
        voice = find_voice(body["voice"])
        if voice is None:
            return invalid("voice", _no_voice(body["voice"]), "unknown_voice")
    return _lang_problem(body, voice) or _renderer_problem(body["renderer"])


def _speakers(voice: Voice | None) -> tuple[str, list[Voice]]:
    """The TTS backend that will speak, and the voices it may pick from.

    An explicit voice is the only candidate. Without one, eSpeak picks a voice by language, and every
    other backend speaks with its one configured voice (listed first).
    """
    if voice is not None:
        return voice.backend, [voice]
    backend = state().engine_settings.tts_backend
    voices = [v for v in listed_voices() if v.backend == backend]
    return backend, voices if backend == "espeak" else voices[:1]


def _lang_problem(body: dict[str, Any], voice: Voice | None) -> Response | None:
    lang = body["lang"]
    try:
        tag = language_tag(lang)
    except EngineError:
        return invalid("lang", _not_a_tag(lang), "invalid_lang")
    if body["text"] is None or (tag == "auto" and voice is not None):
        return None  # nothing to speak (the audio is given), or the chosen voice reads whatever it is given
    spoken = detect_lang(body["text"], tag)
    backend, candidates = _speakers(voice)
    if not candidates or any(speaks(v, spoken) for v in candidates):
        return None  # no voices listed: the backend is down or missing, which the worker reports
    if voice is not None:
        return invalid("lang", f"voice {voice.id!r} speaks {', '.join(voice.languages)}, not {lang!r}; leave voice "
                       f"empty to have one chosen for {lang!r}, or pick one that speaks it from {VOICES}",
                       "unspoken_lang")
    if tag == "auto":
        return invalid("lang", f"the text looks like {spoken!r} (lang auto) and the server's {backend} TTS has no "
                       f"voice for it; set lang, or a voice that speaks it from {VOICES}", "unspoken_lang")
    return invalid("lang", f"no voice of the server's {backend} TTS speaks {lang!r}; {VOICES} lists the voices "
                   "and the languages they speak", "unspoken_lang")


def _renderer_problem(asked: str | None) -> Response | None:
    settings = state().engine_settings
    name = asked or settings.renderer
    missing = missing_setup(name, settings)
    if missing is None:
        return None
    if asked is None:
        return invalid("renderer", f"the server's default renderer {name} is not set up (the operator must set "
                       f"{missing}); ask for renderer procedural", "renderer_not_configured")
    default_ok = name != settings.renderer and missing_setup(settings.renderer, settings) is None
    instead = f"leave renderer empty for the server's default ({settings.renderer})" if default_ok else \
        "ask for renderer procedural"
    return invalid("renderer", f"{name} is not set up on this server (the operator must set {missing}); {instead}",
                   "renderer_not_configured")
