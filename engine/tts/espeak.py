"""eSpeak NG through ctypes, using the library and data shipped in the ``espeakng-loader`` wheel.

The synth callback gives both the audio and phoneme/word events with sample-accurate positions,
which is what the procedural renderer needs for visemes.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..errors import BackendUnavailable, UnknownVoice
from ..text import detect_lang
from .base import Phoneme, Speech, SynthesisRequest, TTSBackend, Voice, Word
from .languages import voice_for_language
from .names import espeak_name

_EVENT_WORD, _EVENT_PHONEME, _EVENT_END = 1, 7, 0
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS_IPA = 0x0001 | 0x0002
_CHARS_UTF8, _ENDPAUSE, _POS_CHARACTER = 1, 0x1000, 1
_PARAM_RATE = 1
DEFAULT_VOICES = {"en": "en-us", "zh": "cmn"}


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _VoiceStruct(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Library:
    """The process-wide libespeak-ng handle. eSpeak keeps global state, so every call holds ``lock``."""

    lock = threading.Lock()
    _instance: _Library | None = None

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - the package is a hard dependency
            raise BackendUnavailable("espeakng-loader is not installed") from exc
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INIT_PHONEME_EVENTS_IPA)
        if self.sample_rate <= 0:
            raise BackendUnavailable("libespeak-ng failed to initialise")
        self._samples: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        self._callback = _CALLBACK(self._on_synth)
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Library:
        with cls.lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_synth(self, wav, count, events) -> int:
        if count > 0 and wav:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_END:
            ev = events[i]
            if ev.type in (_EVENT_WORD, _EVENT_PHONEME):
                name = bytes(ev.id.string).split(b"\0", 1)[0] if ev.type == _EVENT_PHONEME else b""
                self._events.append((ev.type, ev.sample, ev.text_position, ev.length, name))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[tuple[int, int, int, int, bytes]]]:
        """``voice`` is opened as a file by libespeak-ng, so a name with a path in it never gets that far."""
        voice = espeak_name(voice)
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise UnknownVoice(f"eSpeak has no voice {voice!r}; run `python -m engine voices` for the list")
            self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            self._samples, self._events = [], []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            self.lib.espeak_Synchronize()
            samples = np.concatenate(self._samples) if self._samples else np.zeros(0, np.int16)
            return samples, list(self._events)

    def list_voices(self) -> list[tuple[str, str, tuple[str, ...]]]:
        with self.lock:
            arr = self.lib.espeak_ListVoices(None)
            out = []
            i = 0
            while arr[i]:
                v = arr[i].contents
                out.append((v.identifier.decode(), v.name.decode(), _parse_languages(v.languages)))
                i += 1
            return out


def _parse_languages(raw: bytes | None) -> tuple[str, ...]:
    """``languages`` is a list of (priority byte, NUL-terminated name), ended by a zero byte."""
    if not raw:
        return ()
    # ctypes stops c_char_p at the first NUL, so only the first entry is visible; that is the primary one.
    return (raw[1:].decode(errors="ignore"),) if len(raw) > 1 else ()


class EspeakBackend(TTSBackend):
    """Default TTS: formant voices for 100+ languages, phoneme timings from the synth callback."""

    name = "espeak"

    def __init__(self) -> None:
        self._lib = _Library.get()
        self._voices = self._list_voices()

    def _list_voices(self) -> list[Voice]:
        voices = []
        for ident, name, langs in self._lib.list_voices():
            vid = ident.split("/")[-1].lower()
            voices.append(Voice(id=vid, name=name, languages=langs or (vid,), backend=self.name))
        return sorted(voices, key=lambda v: v.id)

    def voices(self) -> list[Voice]:
        return list(self._voices)

    def voice_for(self, request: SynthesisRequest) -> str:
        """The eSpeak voice id for ``request``: only ever one eSpeak itself lists.

        An explicit ``voice`` must be one of those ids; otherwise the language picks one (``en`` and
        ``zh`` have preferred voices, other tags the best match, see ``languages.voice_for_language``).
        """
        lang = detect_lang(request.text, request.lang)  # refuses a malformed lang even when a voice is given
        if request.voice:
            wanted = espeak_name(request.voice, "voice").lower()
            if any(v.id == wanted for v in self._voices):
                return wanted
            raise UnknownVoice(f"eSpeak has no voice {request.voice!r}; the voice list (`python -m engine voices`, "
                               "or GET /v1/voices) has the ids")
        if lang in DEFAULT_VOICES:
            return DEFAULT_VOICES[lang]
        match = voice_for_language(espeak_name(lang, "lang"), self._voices)
        if match is None:
            raise UnknownVoice(f"no eSpeak voice speaks lang {request.lang!r}; the voice list (`python -m engine "
                               "voices`, or GET /v1/voices) shows the languages", field="lang")
        return match.id

    def speaker(self, request: SynthesisRequest) -> Voice | None:
        wanted = self.voice_for(request)
        return next((v for v in self._voices if v.id == wanted), None)

    def synthesize(self, request: SynthesisRequest) -> Speech:
        voice = self.voice_for(request)
        rate = int(np.clip(175 * request.speed, 80, 450))
        raw, events = self._lib.synth(request.text, voice, rate)
        sr = self._lib.sample_rate
        samples = raw.astype(np.float32) / 32768.0
        duration = len(samples) / sr
        phonemes, words = _timings(request.text, events, sr, duration)
        return Speech(samples=samples, sample_rate=sr, phonemes=phonemes, words=words)


def _timings(text, events, sr, duration) -> tuple[list[Phoneme], list[Word]]:
    """Turn start-only events into intervals: each ends where the next one of its kind starts."""
    ph_starts = [(s / sr, name.decode("utf-8", "ignore")) for kind, s, _, _, name in events if kind == _EVENT_PHONEME]
    phonemes = [
        Phoneme(sym, start, ph_starts[i + 1][0] if i + 1 < len(ph_starts) else duration)
        for i, (start, sym) in enumerate(ph_starts)
    ]
    word_ev = [(s / sr, pos, length) for kind, s, pos, length, _ in events if kind == _EVENT_WORD]
    words = []
    for i, (start, pos, _length) in enumerate(word_ev):
        # A word runs to where the next one starts, so trailing punctuation stays with it (for subtitles).
        nxt = word_ev[i + 1][1] if i + 1 < len(word_ev) else len(text) + 1
        token = text[max(pos - 1, 0): max(nxt - 1, 0)].strip()
        end = word_ev[i + 1][0] if i + 1 < len(word_ev) else _last_sound(phonemes, duration)
        if token:
            words.append(Word(token, start, max(end, start)))
    return phonemes, words


def _last_sound(phonemes: list[Phoneme], duration: float) -> float:
    voiced = [p for p in phonemes if p.symbol.strip()]
    return voiced[-1].end if voiced else duration
