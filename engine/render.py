"""The render pipeline: text or audio + an avatar → a lip-synced, browser-playable MP4.

``Engine`` keeps models resident (TTS voices, landmark models, Wav2Lip weights), so a worker
creates one and reuses it for every job.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from . import links, subtitles
from .audio import decode_audio, pad
from .avatars import AvatarStore
from .errors import EngineError, InvalidText, MediaTooLong, UnknownVoice, UnsupportedMedia
from .language_id import language_name
from .lipsync.base import RenderContext, Renderer
from .media import validate_audio
from .neural import require
from .prefetch import prefetch
from .settings import EngineSettings, get_settings
from .text import choose_language, clean_text, language_tag
from .tts import get_backend as get_tts
from .tts.base import Speech, SynthesisRequest, TTSBackend
from .tts.languages import speaks
from .video import Background, BurnIn, VideoWriter, even_size
from .wav import write_wav

Resolution = Literal["source", "720p", "1080p"]
_HEIGHTS = {"source": None, "720p": 720, "1080p": 1080}
UPLOAD_SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Spoken:
    """The speech of a request, made once by ``Engine.speak`` and reusable for several avatars."""

    speech: Speech
    lang: str | None
    tts: str | None
    notes: tuple[str, ...] = ()
    """What the user should know about how the text was read: the detected language, a voice that
    does not speak it."""


@dataclass
class RenderRequest:
    """Exactly one of ``text`` and ``audio`` (or ``spoken``, their speech already made).

    ``avatar`` is an avatar id or a template file path.
    """

    avatar: str
    out: Path
    text: str | None = None
    audio: Path | None = None
    lang: str = "auto"
    voice: str | None = None
    speed: float = 1.0
    resolution: Resolution = "source"
    subtitles: bool = False
    burn_subtitles: bool = False
    renderer: str | None = None
    tts: str | None = None
    spoken: Spoken | None = None


@dataclass
class RenderResult:
    video: Path
    poster: Path
    duration_s: float
    speech_s: float
    fps: float
    width: int
    height: int
    n_frames: int
    size_bytes: int
    avatar_id: str
    renderer: str
    lang: str | None
    tts: str | None
    subtitles_vtt: Path | None = None
    subtitles_srt: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        data["realtime_factor"] = round(self.timings.get("total", 0.0) / max(self.duration_s, 1e-9), 3)
        return data


ProgressFn = Callable[[str, float], None]


def _quiet(stage: str, fraction: float) -> None:
    return None


class Engine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or get_settings()
        self.avatars = AvatarStore(self.settings)
        self._renderers: dict[str, Renderer] = {}

    def renderer(self, name: str | None = None) -> Renderer:
        name = name or self.settings.renderer
        if name not in self._renderers:
            if name == "procedural":
                from .lipsync.procedural import ProceduralRenderer
                self._renderers[name] = ProceduralRenderer()
            elif name == "wav2lip":
                require("the wav2lip renderer", ("torch",), field="renderer")
                from .lipsync.wav2lip import Wav2LipRenderer
                self._renderers[name] = Wav2LipRenderer(self.settings)
            elif name == "heygem":
                from .lipsync.heygem import HeyGemRenderer
                self._renderers[name] = HeyGemRenderer(self.settings)
            else:
                raise UnsupportedMedia(f"unknown renderer {name!r}; choose procedural, wav2lip or heygem",
                                       field="renderer")
        return self._renderers[name]

    def speak(self, req: RenderRequest) -> Spoken:
        """The request's speech: synthesized from its text, or decoded from its audio file."""
        if req.spoken is not None:
            return req.spoken
        if (req.text is None) == (req.audio is None):
            raise InvalidText("give either text to speak or an audio file, not both and not neither")
        if req.audio is not None:
            validate_audio(Path(req.audio), self.settings.max_audio_s)
            samples = decode_audio(Path(req.audio), UPLOAD_SAMPLE_RATE, max_s=self.settings.max_audio_s)
            return Spoken(Speech(samples, UPLOAD_SAMPLE_RATE), None, None)
        text = clean_text(req.text or "", self.settings.max_text_chars)
        choice = choose_language(text, req.lang)
        if not 0.5 <= req.speed <= 2.0:
            raise InvalidText("speed must be between 0.5 and 2.0", field="speed")
        backend = get_tts(self.settings, req.tts)
        script = links.script(text, choice.tag)
        request = SynthesisRequest(text=script.spoken, lang=choice.tag, voice=req.voice, speed=req.speed)
        try:
            speech = backend.synthesize(request)
        except UnknownVoice as exc:
            if exc.field != "lang" or language_tag(req.lang) != "auto":
                raise
            raise UnknownVoice(f"lang auto found {language_name(choice.tag)} ({choice.tag}) in the text, and {exc}; "
                               "or set lang to a language the voice speaks", field="lang") from exc
        if speech.duration <= 0.05:
            raise InvalidText("the text produced no speech; check the language and voice", field="text")
        speech = Speech(speech.samples, speech.sample_rate, speech.phonemes,
                        links.display_words(speech.words, script))
        notes = choice.notes + _voice_note(backend, request, choice.text_lang)
        return Spoken(speech, choice.tag, backend.name, notes)

    def render(self, req: RenderRequest, progress: ProgressFn | None = None) -> RenderResult:
        progress = progress or _quiet
        s = self.settings
        timings: dict[str, float] = {}
        started = clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        if req.resolution not in _HEIGHTS:
            raise UnsupportedMedia(f"resolution must be one of {', '.join(_HEIGHTS)}", field="resolution")
        renderer = self.renderer(req.renderer)
        progress("tts", 0.0)
        spoken = self.speak(req)
        speech, lang, tts_name = spoken.speech, spoken.lang, spoken.tts
        if speech.duration > s.max_audio_s:
            raise MediaTooLong(f"the speech lasts {speech.duration:.1f} s; the limit is {s.max_audio_s:.0f} s",
                               field="audio" if req.audio is not None else "text")
        lap("audio" if req.audio is not None else "tts")

        progress("avatar", 0.0)
        avatar = self.avatars.resolve(req.avatar, progress=progress)
        template = self.avatars.template(avatar)
        lap("avatar")

        fps = template.fps
        n_frames = max(1, math.ceil((s.lead_in_s + speech.duration + s.lead_out_s) * fps - 1e-6))
        total_s = n_frames / fps
        padded = Speech(pad(speech.samples, speech.sample_rate, s.lead_in_s, total_s), speech.sample_rate,
                        speech.phonemes, speech.words).shifted(s.lead_in_s)
        out = Path(req.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out_size = even_size(template.width, template.height, _HEIGHTS[req.resolution])
        notes = [*spoken.notes, *avatar.notes]
        words = padded.words
        if (req.subtitles or req.burn_subtitles) and not words:
            notes.append("subtitles need word timings; uploaded audio has none, so none were made")
        with tempfile.TemporaryDirectory(prefix="render-", dir=out.parent) as tmp, \
                tempfile.TemporaryDirectory(prefix="subs-") as subs_dir:
            burn = None
            if req.burn_subtitles and words:
                # Under a plain temp path: ffmpeg parses filter arguments, so user paths stay out of them.
                _, burn_srt = subtitles.write(words, Path(subs_dir) / "subtitles")
                burn = BurnIn(burn_srt, s.subtitle_font, s.subtitle_font_dir)
            workdir = Path(tmp)
            wav = write_wav(workdir / "speech.wav", padded.samples, padded.sample_rate)
            ctx = RenderContext(template, padded, wav, fps, n_frames, s, workdir, progress)
            meta = {"avatar_id": avatar.id, "template_sha256": avatar.sha256, "renderer": renderer.name,
                    "lead_in_s": s.lead_in_s}
            region = renderer.region(ctx)
            background = None if region is None else Background(
                template.playlist(n_frames, workdir), template.width, template.height, region.x0, region.y0)
            size = (region.width, region.height) if region else (template.width, template.height)
            lap("prepare")
            with VideoWriter(out, width=size[0], height=size[1], fps=fps, audio=wav, out_size=out_size,
                             crf=s.video_crf, preset=s.video_preset, audio_bitrate=s.audio_bitrate,
                             metadata={"comment": json.dumps(meta)}, pix_fmt="yuv420p", background=background,
                             max_frames=n_frames, poster=(out.with_suffix(".jpg"), n_frames // 3),
                             burn_in=burn) as writer:
                frames = prefetch(renderer.frames(ctx, region), depth=4)
                for i in range(n_frames):
                    frame = next(frames, None)
                    if frame is None:
                        raise EngineError(f"renderer {renderer.name} stopped after {i} of {n_frames} frames")
                    lap("lipsync")
                    writer.write(frame)
                    lap("encode")
                progress("encode", 0.99)
                writer.close()
            lap("encode")
        poster = out.with_suffix(".jpg")
        vtt, srt = subtitles.write(words, out) if req.subtitles and words else (None, None)
        lap("finalize")
        timings["total"] = time.perf_counter() - started
        progress("done", 1.0)
        return RenderResult(
            video=out, poster=poster, duration_s=total_s, speech_s=speech.duration, fps=fps,
            width=out_size[0], height=out_size[1], n_frames=n_frames, size_bytes=out.stat().st_size,
            avatar_id=avatar.id, renderer=renderer.name, lang=lang, tts=tts_name, subtitles_vtt=vtt,
            subtitles_srt=srt, timings=timings, notes=notes,
        )


def _voice_note(backend: TTSBackend, request: SynthesisRequest, text_lang: str | None) -> tuple[str, ...]:
    """A note when the voice reading the text does not speak the text's language (it will sound wrong)."""
    voice = None if text_lang is None else backend.speaker(request)
    if voice is None or text_lang is None or speaks(voice, text_lang):
        return ()
    return (f"voice {voice.id!r} speaks {', '.join(voice.languages)}, but the text is in "
            f"{language_name(text_lang)} ({text_lang}): it will sound foreign; choose a voice that speaks "
            f"{text_lang} (`python -m engine voices` or GET /v1/voices), or leave voice empty",)


_default: Engine | None = None


def render(request: RenderRequest, progress: ProgressFn | None = None,
           settings: EngineSettings | None = None) -> RenderResult:
    """Module-level entry point; keeps one resident ``Engine`` per process."""
    global _default
    if settings is not None:
        return Engine(settings).render(request, progress)
    if _default is None:
        _default = Engine()
    return _default.render(request, progress)
