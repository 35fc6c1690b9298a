"""Probing and validating media with ffprobe before any engine time is spent on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import packets
from .errors import CorruptMedia, MediaTooLong, UnsupportedMedia

AUDIO_EXTS = {".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp"}

# ffprobe's demuxer names each extension may legitimately resolve to.
_FORMATS = {
    ".wav": {"wav"}, ".mp3": {"mp3"}, ".m4a": {"mov", "mp4", "m4a", "3gp", "3g2", "mj2"}, ".aac": {"aac"},
    ".flac": {"flac"}, ".ogg": {"ogg"},
    ".mp4": {"mov", "mp4", "m4a", "3gp", "3g2", "mj2"}, ".mov": {"mov", "mp4", "m4a", "3gp", "3g2", "mj2"},
    ".avi": {"avi"}, ".mkv": {"matroska", "webm"}, ".webm": {"matroska", "webm"}, ".flv": {"flv"},
    ".jpg": {"image2", "jpeg_pipe"}, ".jpeg": {"image2", "jpeg_pipe"}, ".png": {"image2", "png_pipe"},
    ".webp": {"image2", "webp_pipe"},
}
MAX_AUDIO_CHANNELS = 64
"""The most channels the audio decoder mixes down to mono (ffmpeg's ``pan`` filter takes at most 64)."""
MEASURE_TIMEOUT_S = 60
"""Longest the engine's own packet count may take; it stops at the length limit, so only a damaged file gets here."""

_LOG_TAG = re.compile(r"\[[^\[\]]*@\s*0x[0-9a-fA-F]+\]\s*")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{8,}\b")
_PATH = re.compile(r"(?<![\w.])(?:file:)?/[^\s'\"]+(?::\s+)?")


def plain_reason(line: str) -> str:
    """An ffmpeg or ffprobe log line fit for a user: no ``[context @ 0x…]`` tags, heap addresses or server paths.

    ffmpeg prefixes its lines with the address of the object that logged them, and quotes input paths;
    neither tells a user anything, and both tell an attacker about the server.
    """
    line = _ADDRESS.sub("", _LOG_TAG.sub("", line))
    return " ".join(_PATH.sub("", line).split())[:200] or "no details"


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    format_names: frozenset[str]
    duration: float
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    frame_count: int = 0
    sample_rate: int = 0
    channels: int = 0


def ffprobe_exe() -> str:
    exe = shutil.which("ffprobe")
    if not exe:
        raise RuntimeError("ffprobe is not installed: run `make setup` (installs Debian's ffmpeg package)")
    return exe


def probe(path: Path) -> MediaInfo:
    """Read container and stream facts; anything ffprobe cannot parse is ``CorruptMedia``."""
    cmd = [
        ffprobe_exe(), "-v", "error", "-protocol_whitelist", "file",
        "-show_entries",
        "format=format_name,duration:stream=codec_type,codec_name,width,height,avg_frame_rate,r_frame_rate,"
        "nb_frames,sample_rate,channels,duration",
        "-of", "json", str(path),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CorruptMedia(f"{path.name}: probing timed out; the file looks damaged") from exc
    if out.returncode != 0:
        reason = out.stderr.decode(errors="replace").strip().splitlines()
        raise CorruptMedia(f"{path.name} is not readable media "
                           f"({plain_reason(reason[-1]) if reason else 'ffprobe failed'})")
    data = json.loads(out.stdout or b"{}")
    fmt = data.get("format", {})
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    fps = 0.0
    if video:
        for key in ("avg_frame_rate", "r_frame_rate"):
            rate = video.get(key, "0/0")
            if rate and not rate.endswith("/0") and Fraction(rate) > 0:
                fps = float(Fraction(rate))
                break
    duration = _float(fmt.get("duration")) or _float((video or audio or {}).get("duration"))
    return MediaInfo(
        path=path,
        format_names=frozenset(str(fmt.get("format_name", "")).split(",")),
        duration=duration,
        has_audio=audio is not None,
        has_video=video is not None,
        width=int(video.get("width", 0)) if video else 0,
        height=int(video.get("height", 0)) if video else 0,
        fps=fps,
        frame_count=int(_float(video.get("nb_frames")) if video else 0),
        sample_rate=int(_float(audio.get("sample_rate"))) if audio else 0,
        channels=int(_float(audio.get("channels"))) if audio else 0,
    )


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _check_format(path: Path, info: MediaInfo, field: str) -> None:
    allowed = _FORMATS[path.suffix.lower()]
    if not info.format_names & allowed:
        found = ",".join(sorted(info.format_names)) or "unknown"
        raise UnsupportedMedia(
            f"{path.name}: the extension says {path.suffix.lower()[1:]} but the content is {found}; "
            "save it in the format its name says", field=field,
        )


def validate_audio(path: Path, max_seconds: float, field: str = "audio") -> MediaInfo:
    """An allowed extension, a matching container, an audio stream, and a duration within the limit."""
    ext = path.suffix.lower()
    if ext not in AUDIO_EXTS:
        raise UnsupportedMedia(
            f"{path.name}: audio must be one of {', '.join(sorted(AUDIO_EXTS))}", field=field)
    info = probe(path)
    _check_format(path, info, field)
    if not info.has_audio:
        raise UnsupportedMedia(f"{path.name} has no audio stream", field=field)
    if info.duration <= 0:
        raise CorruptMedia(f"{path.name}: could not read a duration; the file looks truncated", field=field)
    if info.duration > max_seconds:
        raise MediaTooLong(
            f"{path.name} is {info.duration:.1f} s long; the limit is {max_seconds:.0f} s "
            "(split it, or raise ENGINE_MAX_AUDIO_S)", field=field)
    if info.channels > MAX_AUDIO_CHANNELS:
        raise UnsupportedMedia(
            f"{path.name} has {info.channels} audio channels; at most {MAX_AUDIO_CHANNELS} can be mixed down to "
            "mono; export it as mono or stereo", field=field)
    _check_measured(path, info, max_seconds, field, "split it, or raise ENGINE_MAX_AUDIO_S")
    return info


def validate_template(path: Path, max_seconds: float, max_pixels: int, field: str = "avatar",
                      min_side: int = 1) -> MediaInfo:
    """A photo or a video in an allowed format, with a picture, within the duration and size limits.

    ``min_side`` is the smallest width and height accepted: pass the smallest face the engine tracks, since a
    smaller picture cannot hold one (and a 1x1 video would otherwise reach the encoder as a 0x0 frame).
    """
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTS | IMAGE_EXTS:
        raise UnsupportedMedia(
            f"{path.name}: an avatar must be a video ({', '.join(sorted(VIDEO_EXTS))}) "
            f"or a photo ({', '.join(sorted(IMAGE_EXTS))})", field=field)
    info = probe(path)
    _check_format(path, info, field)
    if not info.has_video or info.width <= 0 or info.height <= 0:
        raise UnsupportedMedia(f"{path.name} has no picture in it", field=field)
    if info.width * info.height > max_pixels:
        raise UnsupportedMedia(
            f"{path.name} is {info.width}x{info.height}; the limit is {max_pixels} pixels (ENGINE_MAX_TEMPLATE_PIXELS)",
            field=field)
    if min(info.width, info.height) < min_side:
        raise UnsupportedMedia(
            f"{path.name} is only {info.width}x{info.height} pixels; a face needs a picture at least {min_side} "
            "pixels wide and tall (ENGINE_MIN_FACE_PX); use a larger photo or video", field=field)
    if ext in VIDEO_EXTS and info.duration > max_seconds:
        raise MediaTooLong(
            f"{path.name} is {info.duration:.1f} s long; templates may be at most {max_seconds:.0f} s "
            "(trim it, or raise ENGINE_MAX_TEMPLATE_S)", field=field)
    if ext in VIDEO_EXTS:
        _check_measured(path, info, max_seconds, field, "trim it, or raise ENGINE_MAX_TEMPLATE_S")
    return info


def _check_measured(path: Path, info: MediaInfo, max_seconds: float, field: str, fix: str) -> None:
    """The header's duration was within the limit; the packets must be too (a header can lie)."""
    cmd = [ffprobe_exe(), "-v", "error", "-protocol_whitelist", "file", *packets.PACKET_ARGS, str(path)]
    measured = packets.read(cmd, max_duration_s=max_seconds, timeout_s=MEASURE_TIMEOUT_S)
    if measured.timed_out:
        raise CorruptMedia(f"{path.name}: reading it took longer than {MEASURE_TIMEOUT_S} s; the file looks damaged",
                           field=field)
    if measured.stopped:
        raise MediaTooLong(
            f"{path.name} holds more than {max_seconds:.0f} s of media, although its header says "
            f"{info.duration:.1f} s; the limit is {max_seconds:.0f} s ({fix})", field=field)
