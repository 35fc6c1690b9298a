"""The avatar handle that travels between Talking Head nodes (ComfyUI type ``TALKING_HEAD_AVATAR``)."""

from __future__ import annotations

from dataclasses import dataclass

AVATAR_TYPE = "TALKING_HEAD_AVATAR"
SPOKEN_KEY = "talking_head_spoken"
"""Extra key in an ``AUDIO`` dict made by Talking Head Speech: the engine's speech with its word timings, so
Render can burn in subtitles. Core nodes read only ``waveform`` and ``sample_rate`` and ignore it."""


@dataclass(frozen=True)
class AvatarHandle:
    """A preprocessed avatar in the engine's store, or why there is none.

    A face problem is carried, not raised, so that one bad photo in a batch can be skipped by a
    Face Check instead of failing the whole prompt.
    """

    label: str
    avatar_id: str | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.avatar_id is not None and self.problem is None
