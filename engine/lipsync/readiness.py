"""Whether a renderer is set up on this server, answered from settings alone.

The bridge asks at submit, so a job for a renderer the operator never configured is refused at once
instead of failing on a worker after its speech was made. Only settings are read (no weights are
loaded, no service is called, no file is opened): the API may run on a host without the checkpoint
files its GPU workers hold, so files and services are still checked by the renderer when it runs.
"""

from __future__ import annotations

from ..settings import EngineSettings

RENDERERS: tuple[str, ...] = ("procedural", "wav2lip", "heygem")


def missing_setup(renderer: str, settings: EngineSettings) -> str | None:
    """What the operator must configure before ``renderer`` can run; None when nothing is missing."""
    if renderer == "wav2lip" and settings.wav2lip_checkpoint is None:
        return "ENGINE_WAV2LIP_CHECKPOINT (the path of a wav2lip.pth or wav2lip_gan.pth checkpoint)"
    if renderer == "heygem":
        missing = [name for name, value in (("ENGINE_HEYGEM_URL", settings.heygem_url),
                                            ("ENGINE_HEYGEM_DATA_DIR", settings.heygem_data_dir)) if not value]
        if missing:
            return " and ".join(missing) + " (the HeyGem video service and its shared face2face/temp directory)"
    if renderer not in RENDERERS:
        return f"a renderer named {renderer!r}: this engine has only {', '.join(RENDERERS)}"
    return None
