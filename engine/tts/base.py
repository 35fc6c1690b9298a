"""The TTS interface: every backend turns text into a ``Speech`` (audio plus timings where it can)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Phoneme:
    """One phoneme, IPA where the backend gives IPA, times in seconds from the start of the audio."""

    symbol: str
    start: float
    end: float


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    languages: tuple[str, ...]
    backend: str


@dataclass
class Speech:
    """Mono float32 samples in -1..1 plus optional timings (empty when the backend has none)."""

    samples: np.ndarray
    sample_rate: int
    phonemes: list[Phoneme] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.samples) / float(self.sample_rate)

    def shifted(self, offset_s: float) -> Speech:
        """Timings moved by ``offset_s`` (used when silence is padded in front)."""
        return Speech(
            samples=self.samples,
            sample_rate=self.sample_rate,
            phonemes=[Phoneme(p.symbol, p.start + offset_s, p.end + offset_s) for p in self.phonemes],
            words=[Word(w.text, w.start + offset_s, w.end + offset_s) for w in self.words],
        )


@dataclass(frozen=True)
class SynthesisRequest:
    text: str
    lang: str = "en"
    voice: str | None = None
    speed: float = 1.0


class TTSBackend(ABC):
    """A text-to-speech engine. Implementations must be safe to call from one thread at a time."""

    name: str = ""

    @abstractmethod
    def synthesize(self, request: SynthesisRequest) -> Speech:
        """Speak ``request.text``; raise ``engine.errors.EngineError`` subclasses on failure."""

    @abstractmethod
    def voices(self) -> list[Voice]:
        """Voices this backend can use right now."""

    def speaker(self, request: SynthesisRequest) -> Voice | None:
        """The voice that will read ``request``, so the engine can tell the user when its language is not
        the text's; None when that is not known. Default: the asked-for voice, else the first listed."""
        voices = self.voices()
        if request.voice:
            return next((v for v in voices if v.id.lower() == request.voice.lower()), None)
        return voices[0] if voices else None
