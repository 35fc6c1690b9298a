"""Talking Head Speech: text → ``AUDIO`` (with word timings kept for subtitles) + WebVTT."""

from __future__ import annotations

from engine import EngineError, subtitles
from engine.render import RenderRequest
from engine.tts import list_voices

from .. import convert, host
from ..handle import SPOKEN_KEY

NODE = "Talking Head Speech"
DEFAULT_VOICE = "(default for the language)"
LANGUAGES = ["auto", "en", "zh", "fr", "de", "es", "it", "pt", "nl", "ru", "ja", "ko", "ar", "hi"]


def voice_ids() -> list[str]:
    """The combo's options: the engine's own voice ids, so the user can only pick one that exists."""
    try:
        voices = [v.id for v in list_voices(host.engine().settings)]
    except EngineError:
        voices = []
    return [DEFAULT_VOICE, *sorted(set(voices))]


class TalkingHeadSpeech:
    """Synthesizes speech on this machine with the engine's TTS; no network, no downloads."""

    CATEGORY = host.CATEGORY
    DESCRIPTION = "Text to speech for a talking head (lip sync): audio plus word timings as WebVTT."
    RETURN_TYPES = ("AUDIO", "STRING")
    RETURN_NAMES = ("audio", "timings_vtt")
    FUNCTION = "speak"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "default": "Hello! I am a talking head.",
                                    "tooltip": "What the talking head says (up to 2,000 characters)."}),
                "language": (LANGUAGES, {"default": "auto",
                                         "tooltip": "auto detects it from the text; or a BCP 47 tag."}),
                "voice": (voice_ids(), {"default": DEFAULT_VOICE}),
                "speed": ("FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0, "step": 0.05}),
            }
        }

    def speak(self, text: str, language: str, voice: str, speed: float) -> tuple[dict, str]:
        request = RenderRequest(avatar="-", out=host.work_dir() / "unused.mp4", text=text, lang=language,
                                voice=None if voice == DEFAULT_VOICE else voice, speed=speed)
        try:
            spoken = host.engine().speak(request)
        except EngineError as err:
            raise host.explain(NODE, err) from err
        audio = convert.audio_dict(spoken.speech.samples, spoken.speech.sample_rate)
        audio[SPOKEN_KEY] = spoken
        return audio, subtitles.to_vtt(subtitles.cues(spoken.speech.words))
