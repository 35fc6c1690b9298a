"""Engine configuration: one settings object, read from the environment (prefix ``ENGINE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseSettings):
    """Every knob the engine reads. Documented in engine/README.md and .env.example."""

    model_config = SettingsConfigDict(env_prefix="ENGINE_", env_file=".env", extra="ignore")

    storage_root: Path = Field(Path("var"), description="Avatar cache and sample avatars live here.")
    tts_backend: Literal["espeak", "piper", "openai", "heygem"] = "espeak"
    renderer: Literal["procedural", "wav2lip", "heygem"] = "procedural"
    face_backend: Literal["dlib", "face_alignment"] = "dlib"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    max_text_chars: int = Field(2000, ge=1)
    max_audio_s: float = Field(300.0, gt=0)
    max_template_s: float = Field(300.0, gt=0)
    max_template_pixels: int = Field(3840 * 2160, gt=0)
    min_face_px: int = Field(40, ge=16, description="Smallest face (brow to chin, pixels) the engine accepts; a "
                             "template smaller than this on either side cannot hold one and is refused. The mouth is "
                             "drawn at a fixed working size, so small faces are upscaled, not drawn coarsely.")

    mouth_smile_relax: float = Field(0.6, ge=0, le=1, description="How much of a smiling template's smile "
                                     "the procedural renderer lets go of while the avatar speaks (0 keeps it, 1 "
                                     "relaxes to neutral); it returns in pauses.")

    lead_in_s: float = Field(0.2, ge=0, le=2)
    lead_out_s: float = Field(0.3, ge=0, le=2)
    default_fps: float = Field(25.0, gt=0, le=60)
    video_crf: int = Field(20, ge=0, le=51)
    video_preset: str = "veryfast"
    audio_bitrate: str = "128k"
    subtitle_font: str = Field("WenQuanYi Micro Hei", description="Font for burned-in subtitles (covers CJK).")
    subtitle_font_dir: Path = Field(Path("/usr/share/fonts"), description="Where that font is installed.")

    piper_voice: str | None = Field(None, description="Path to a Piper .onnx voice, or an installed voice package.")

    openai_tts_url: str | None = Field(None, description="Base URL of an OpenAI-compatible TTS server.")
    openai_tts_key: SecretStr | None = None
    openai_tts_model: str = "tts-1"
    openai_tts_voice: str = "alloy"

    heygem_tts_url: str | None = Field(None, description="HeyGem fish-speech service, e.g. http://host:18180")
    heygem_tts_speaker: str | None = Field(None, description="Fixed speaker id; unset sends a fresh UUID per call, "
                                           "as HeyGem's own client does.")
    heygem_tts_reference_audio: str | None = None
    heygem_tts_reference_text: str | None = None
    heygem_tts_timeout_per_char_s: float = Field(
        0.25, ge=0, description="Added to ENGINE_HTTP_TIMEOUT_S per character of text: fish-speech answers "
        "only when the whole WAV is made.")

    heygem_url: str | None = Field(None, description="HeyGem video service, e.g. http://host:8383 (with or without "
                                   "the /easy suffix its client uses).")
    heygem_data_dir: Path | None = Field(None, description="Host path of HeyGem's shared face2face/temp dir.")
    heygem_path_style: Literal["bare", "container"] = Field(
        "bare", description="How files are named to HeyGem: bare names (its own client) or in-container paths.")
    heygem_container_dir: str = Field("/code/data/temp", description="The data dir as the HeyGem container sees it "
                                      "(used with ENGINE_HEYGEM_PATH_STYLE=container).")
    heygem_audio_rate: int = Field(44100, ge=8000, le=192000, description="Speech is handed over as mono WAV at this "
                                   "rate: what HeyGem's own fish-speech TTS returns.")
    heygem_poll_s: float = Field(2.0, gt=0)
    heygem_timeout_s: float = Field(1800.0, gt=0)
    heygem_stall_s: float = Field(900.0, gt=0, description="A task whose progress has not moved this long is stalled.")
    heygem_poll_retry_s: float = Field(120.0, ge=0, description="How long transient errors while polling are retried.")
    heygem_grace_s: float = Field(3600.0, ge=0, description="After we give up on a task, its inputs stay this long "
                                  "unless its result appears first.")
    heygem_result_wait_s: float = Field(10.0, ge=0, description="How long a finished task's result may take to "
                                        "become visible (network shares).")

    wav2lip_checkpoint: Path | None = Field(None, description="Path to wav2lip.pth or wav2lip_gan.pth.")
    wav2lip_batch_size: int = Field(32, ge=1)
    face_alignment_dir: Path | None = Field(None, description="Directory holding face-alignment weights.")

    http_timeout_s: float = Field(60.0, gt=0)

    @property
    def avatars_dir(self) -> Path:
        return self.storage_root / "avatars"


@lru_cache(maxsize=1)
def get_settings() -> EngineSettings:
    return EngineSettings()
