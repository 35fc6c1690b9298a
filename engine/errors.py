"""Errors a user can act on. Each carries a stable ``code``, the offending ``field`` and a hint."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: ``code`` is stable for machines, ``str(err)`` is for people."""

    code = "engine_error"
    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": str(self), "field": self.field}


class InvalidText(EngineError):
    code = "invalid_text"
    field = "text"


class UnsupportedMedia(EngineError):
    """Wrong extension, wrong container, not media at all."""

    code = "unsupported_media"


class CorruptMedia(EngineError):
    code = "corrupt_media"


class MediaTooLong(EngineError):
    code = "media_too_long"


class NoFace(EngineError):
    code = "no_face"
    field = "avatar"


class FaceTooSmall(EngineError):
    code = "face_too_small"
    field = "avatar"


class UnknownAvatar(EngineError):
    code = "unknown_avatar"
    field = "avatar"


class UnknownVoice(EngineError):
    code = "unknown_voice"
    field = "voice"


class MissingWeights(EngineError):
    """A backend needs weights the user has to supply; we never download them."""

    code = "missing_weights"


class BackendUnavailable(EngineError):
    """A configured external service (TTS server, HeyGem) cannot be used."""

    code = "backend_unavailable"


class BackendFailed(EngineError):
    """An external service accepted the work and then reported failure."""

    code = "backend_failed"


class BackendStalled(BackendFailed):
    """An external service took the work and stopped making progress; it needs a restart, not a retry."""

    code = "backend_stalled"
