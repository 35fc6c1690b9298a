"""Checking a saved upload or download with ffprobe before any engine time is spent on it.

ffprobe decides what a file is, never its name: the file is probed through a link with no extension (ffmpeg
would otherwise favour the demuxer the name suggests), only ``file:`` may be opened (an HLS playlist cannot
make it fetch anything) and only the demuxers of the expected kind may be used. The stored extension comes
from what was detected; a user's file name that says otherwise is refused rather than silently corrected.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path, PurePath
from typing import Any, Literal

from engine import packets
from engine.errors import CorruptMedia, EngineError, MediaTooLong, UnsupportedMedia
from engine.media import MAX_AUDIO_CHANNELS, ffprobe_exe, plain_reason
from engine.settings import EngineSettings

Expect = Literal["audio", "avatar"]
Kind = Literal["audio", "video", "image"]

PROBE_TIMEOUT_S = 30
_RLIMITS = ("--as=4294967296", "--cpu=60")  # address space and CPU seconds for each ffprobe run
_DECODE_PACKETS = 8  # enough for decoders with priming or header packets (AAC, Vorbis) to give a frame


@dataclass(frozen=True)
class _Format:
    label: str
    aliases: str
    """ffmpeg's names of the demuxer, as ``format_name`` reports it and ``-format_whitelist`` matches it."""
    ext: str
    names: frozenset[str]
    """User file extensions that agree with this format."""
    audio_ext: str = ""
    image: bool = False


_MOV = ".mp4", ".m4a", ".mov", ".m4v", ".3gp", ".3g2"
_FORMATS: dict[str, _Format] = {
    "wav": _Format("WAV", "wav", ".wav", frozenset({".wav"})),
    "mp3": _Format("MP3", "mp3", ".mp3", frozenset({".mp3"})),
    "mov": _Format("MP4/MOV", "mov,mp4,m4a,3gp,3g2,mj2", ".mp4", frozenset(_MOV), audio_ext=".m4a"),
    "aac": _Format("AAC", "aac", ".aac", frozenset({".aac"})),
    "flac": _Format("FLAC", "flac", ".flac", frozenset({".flac"})),
    "ogg": _Format("Ogg", "ogg", ".ogg", frozenset({".ogg", ".oga", ".opus"})),
    "matroska": _Format("Matroska/WebM", "matroska,webm", ".mkv", frozenset({".mkv", ".webm"})),
    "avi": _Format("AVI", "avi", ".avi", frozenset({".avi"})),
    "flv": _Format("FLV", "flv", ".flv", frozenset({".flv"})),
    "png_pipe": _Format("PNG", "png_pipe", ".png", frozenset({".png"}), image=True),
    "jpeg_pipe": _Format("JPEG", "jpeg_pipe", ".jpg", frozenset({".jpg", ".jpeg", ".jpe", ".jfif"}), image=True),
    "webp_pipe": _Format("WebP", "webp_pipe", ".webp", frozenset({".webp"}), image=True),
}
ACCEPTED: dict[Expect, tuple[str, ...]] = {
    "audio": ("wav", "mp3", "mov", "aac", "flac", "ogg"),
    "avatar": ("mov", "matroska", "avi", "flv", "png_pipe", "jpeg_pipe", "webp_pipe"),
}
# Names a file could carry that clearly claim some format, so a mismatch with the content is worth refusing.
_CLAIMING_EXTS = frozenset().union(*(fmt.names for fmt in _FORMATS.values())) | {
    ".m3u8", ".m3u", ".mpd", ".ts", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif", ".wma", ".wmv", ".txt",
}
# Demuxers that refuse-by-whitelist may name, described for a user.
_FOREIGN = {"hls": "an HLS playlist", "dash": "a DASH manifest", "concat": "an ffmpeg concat list",
            "image2": "an image sequence", "mpegts": "an MPEG-TS stream", "gif": "a GIF", "tty": "text"}


@dataclass(frozen=True)
class MediaLimits:
    """Caps on what a file may be. ``max_duration_s`` is not applied to photos."""

    max_duration_s: float
    max_pixels: int = 3840 * 2160
    max_side: int = 4096
    min_side: int = 1
    """Smallest width and height of a picture; for avatars, the engine's smallest face (ENGINE_MIN_FACE_PX)."""
    max_streams: int = 8
    max_fps: float = 120.0
    max_channels: int = MAX_AUDIO_CHANNELS

    @property
    def max_frames(self) -> int:
        """The most video packets a file within the duration and frame rate limits can hold."""
        return math.ceil(self.max_duration_s * self.max_fps) + 1

    @classmethod
    def for_engine(cls, expect: Expect, settings: EngineSettings) -> MediaLimits:
        """The engine's own limits, so what passes here also passes its checks at render time."""
        if expect == "audio":
            return cls(max_duration_s=settings.max_audio_s)
        return cls(max_duration_s=settings.max_template_s, max_pixels=settings.max_template_pixels,
                   min_side=settings.min_face_px)


@dataclass(frozen=True)
class CheckedMedia:
    kind: Kind
    ext: str
    """The extension to store the file under (``.wav``, ``.m4a``, ``.mp4``, ``.png``…), from the content."""
    duration_s: float
    """0 for a photo."""
    width: int
    height: int
    format_label: str


def check_media(path: Path, expect: Expect, limits: MediaLimits, *, user_filename: str | None = None,
                field: str | None = None) -> CheckedMedia:
    """Probe ``path`` and check it is a usable ``expect`` file within ``limits``.

    ``user_filename`` is the name the user gave (multipart filename, last URL segment), used only to catch a
    contradicting extension and in messages. Raises ``UnsupportedMedia``, ``CorruptMedia`` or ``MediaTooLong``
    (all ``EngineError``); ``str(err)`` starts with ``field`` (default ``expect``) and says what to change.

    The duration is measured from the packets, never taken from the header alone: an MP3's Xing frame count or a
    Matroska Duration element is whatever the file's author wrote. Nothing is decoded beyond a few packets.
    """
    say = _Say(field or expect, _display_name(user_filename))
    accepted = [_FORMATS[key] for key in ACCEPTED[expect]]
    whitelist = ",".join(fmt.aliases for fmt in accepted)
    with tempfile.TemporaryDirectory(prefix="media-check-") as tmp:
        link = Path(tmp) / "input"
        link.symlink_to(path.resolve())
        entries = ("format=format_name,duration:stream=index,codec_type,codec_name,width,height,avg_frame_rate,"
                   "nb_frames,channels,duration:stream_disposition=attached_pic")
        data, errors = _ffprobe(link, say, "-format_whitelist", whitelist, "-show_entries", entries)
        if data is None:
            raise _unreadable(errors, expect, accepted, say)
        fmt = _FORMATS.get(str(data["format"].get("format_name", "")).split(",")[0])
        if fmt is None or fmt not in accepted:  # the whitelist makes this unreachable; keep the promise anyway
            raise say(UnsupportedMedia, f"is not an accepted {expect} format; use {_choices(expect, accepted)}")
        streams: list[dict[str, Any]] = data.get("streams", [])
        _check_name(say, fmt, expect)
        if len(streams) > limits.max_streams:
            raise say(UnsupportedMedia, f"has {len(streams)} streams; at most {limits.max_streams} are accepted")
        media = _check_content(say, fmt, expect, streams, data["format"], limits)
        media = _check_packets(link, say, whitelist, streams, errors, media, limits)
        _check_decodes(link, say, streams, media.kind)
    return media


class _Say:
    """Builds errors that start with the field and, when known, the user's file name."""

    def __init__(self, field: str, name: str | None) -> None:
        self.field, self.name = field, name

    def __call__(self, cls: type[EngineError], reason: str) -> EngineError:
        subject = f"{self.name} " if self.name else "the file "
        return cls(f"{self.field}: {subject}{reason}", field=self.field)


def _display_name(name: str | None) -> str | None:
    """The last path segment, printable characters only, at most 100 of them."""
    if not name:
        return None
    base = "".join(ch for ch in re.split(r"[\\/]", name)[-1] if ch.isprintable())[:100]
    return base or None


def _choices(expect: Expect, accepted: list[_Format]) -> str:
    if expect == "audio":
        return "audio in " + ", ".join(fmt.label for fmt in accepted)
    videos = ", ".join(fmt.label for fmt in accepted if not fmt.image)
    photos = ", ".join(fmt.label for fmt in accepted if fmt.image)
    return f"a video ({videos}) or a photo ({photos})"


def _ffprobe_cmd(link: Path, *args: str) -> list[str]:
    """ffprobe on ``link``: file protocol only, under rlimits."""
    prlimit = shutil.which("prlimit")
    return [*([prlimit, *_RLIMITS, "--"] if prlimit else []), ffprobe_exe(), "-v", "error", "-hide_banner",
            "-protocol_whitelist", "file", *args, f"file:{link}"]


def _ffprobe(link: Path, say: _Say, *args: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Run ffprobe on ``link`` with small JSON output: the JSON (None on failure) and the error lines."""
    try:
        out = subprocess.run(_ffprobe_cmd(link, *args, "-of", "json"), capture_output=True, timeout=PROBE_TIMEOUT_S,
                             check=False)
    except subprocess.TimeoutExpired:
        raise say(CorruptMedia, f"took longer than {PROBE_TIMEOUT_S} s to read; it looks damaged") from None
    errors = [line.strip() for line in out.stderr.decode(errors="replace").splitlines() if line.strip()]
    data = json.loads(out.stdout or b"{}") if out.returncode == 0 else {}
    return (data if "format" in data or "frames" in data else None), errors


def _unreadable(errors: list[str], expect: Expect, accepted: list[_Format], say: _Say) -> EngineError:
    joined = "\n".join(errors)
    foreign = re.search(r"^\[([\w,]+) @ 0x[0-9a-f]+\] Format not on whitelist", joined, re.M)
    if foreign or any("Format not on whitelist" in line for line in errors):
        name = foreign.group(1) if foreign else ""
        known = next((fmt for fmt in _FORMATS.values() if name and name == fmt.aliases), None)
        what = f"in {known.label} format" if known else _FOREIGN.get(name.split(",")[0], f"{name or 'another'} format")
        return say(UnsupportedMedia, f"is {what}, which is not accepted as {expect}; use {_choices(expect, accepted)}")
    if any("moov atom not found" in line for line in errors):
        return say(CorruptMedia, "is an incomplete MP4/MOV (its index is missing; the upload or download was cut "
                                 "short, or the recording was not finished); upload the whole file")
    last = plain_reason(errors[-1]) if errors else "ffprobe could not read it"
    return say(UnsupportedMedia, f"is not readable media ({last}); use {_choices(expect, accepted)}")


def _check_name(say: _Say, fmt: _Format, expect: Expect) -> None:
    """A name that claims another format is refused: the user should know their file is not what they think."""
    if not say.name:
        return
    ext = PurePath(say.name).suffix.lower()
    if ext in _CLAIMING_EXTS and ext not in fmt.names:
        right = fmt.audio_ext if expect == "audio" and fmt.audio_ext else fmt.ext
        raise say(UnsupportedMedia, f"is named {ext} but the content is {fmt.label}; "
                                    f"rename it to {right}, or convert it to the format its name says")


def _check_packets(link: Path, say: _Say, whitelist: str, streams: list[dict[str, Any]], header_errors: list[str],
                   media: CheckedMedia, limits: MediaLimits) -> CheckedMedia:
    """Read every packet (decoding none), stopping once the file is past the limits: the real length, and a
    complete file (every packet the header promises, no demuxing error)."""
    covers = [s["index"] for s in streams if _attached_pic(s)]
    max_duration = math.inf if media.kind == "image" else limits.max_duration_s
    found = packets.read(_ffprobe_cmd(link, "-format_whitelist", whitelist, *packets.PACKET_ARGS),
                         max_duration_s=max_duration, max_video_packets=limits.max_frames, ignore=covers,
                         timeout_s=PROBE_TIMEOUT_S)
    if found.timed_out:
        raise say(CorruptMedia, f"took longer than {PROBE_TIMEOUT_S} s to read; it looks damaged")
    if found.stopped == "duration":
        raise say(MediaTooLong, f"holds more than {limits.max_duration_s:g} s of media, although its header says "
                                f"{media.duration_s:.1f} s; the limit is {limits.max_duration_s:g} s; trim or split it")
    if found.stopped == "frames":
        raise say(MediaTooLong, f"has more than {limits.max_frames:,} video frames, more than "
                                f"{limits.max_duration_s:g} s at {limits.max_fps:g} frames per second; trim it")
    for stream in streams:
        seen = found.streams.get(stream["index"])
        promised, read = _int(stream.get("nb_frames")), seen.count if seen else 0
        if promised and read < promised:
            raise say(CorruptMedia, f"is incomplete: stream {stream.get('index')} has {read} of its {promised} "
                                    "packets (the upload or download was cut short); upload the whole file")
    errors = header_errors + found.errors
    if errors or found.returncode != 0:
        why = plain_reason(errors[-1]) if errors else "ffprobe stopped reading it"
        raise say(CorruptMedia, f"is damaged or incomplete ({why}); upload the whole file again")
    if media.kind == "image":
        return media
    duration = found.duration(ignore=covers)
    if duration <= 0:
        raise say(CorruptMedia, "has no readable duration; it looks truncated or is a live recording that "
                                "was not finished; export it again")
    return replace(media, duration_s=duration)


def _check_content(say: _Say, fmt: _Format, expect: Expect, streams: list[dict[str, Any]], container: dict[str, Any],
                   limits: MediaLimits) -> CheckedMedia:
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [s for s in streams if s.get("codec_type") == "video" and not _attached_pic(s)]
    if expect == "audio":
        if not audio:
            raise say(UnsupportedMedia, "has no audio stream; use a recording with sound")
        channels = _int(audio[0].get("channels"))
        if channels > limits.max_channels:
            raise say(UnsupportedMedia, f"has {channels} audio channels; at most {limits.max_channels} can be mixed "
                                        "down to mono; export it as mono or stereo")
        kind: Kind = "audio"
        width = height = 0
    else:
        if not video or _int(video[0].get("width")) <= 0 or _int(video[0].get("height")) <= 0:
            raise say(UnsupportedMedia, "has no picture in it; use a video or a photo of a face")
        kind = "image" if fmt.image else "video"
        width, height = _int(video[0]["width"]), _int(video[0]["height"])
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise say(UnsupportedMedia, f"is {width}x{height}; the limit is {limits.max_pixels:,} pixels and "
                                        f"{limits.max_side} per side; scale it down (for example to 1920x1080)")
        if min(width, height) < limits.min_side:
            raise say(UnsupportedMedia, f"is only {width}x{height} pixels; a face needs a picture at least "
                                        f"{limits.min_side} pixels wide and tall; use a larger photo or video")
        fps = _fps(video[0].get("avg_frame_rate"))
        if kind == "video" and fps > limits.max_fps:
            raise say(UnsupportedMedia, f"runs at {fps:.0f} frames per second; the limit is {limits.max_fps:.0f}")
    duration = 0.0
    if kind != "image":  # what the header claims: enough to refuse at once, never enough to accept
        primary = audio[0] if kind == "audio" else video[0]
        duration = _float(container.get("duration")) or _float(primary.get("duration"))
        if duration > limits.max_duration_s:
            raise say(MediaTooLong, f"is {duration:.1f} s long; the limit is {limits.max_duration_s:g} s; "
                                    "trim or split it")
    ext = fmt.audio_ext if kind == "audio" and fmt.audio_ext else fmt.ext
    return CheckedMedia(kind, ext, duration, width, height, fmt.label)


def _check_decodes(link: Path, say: _Say, streams: list[dict[str, Any]], kind: Kind) -> None:
    """Decode the first frames of the stream the engine will use: a cut-off JPEG or an unknown codec fails here."""
    wanted = "audio" if kind == "audio" else "video"
    index = next(s["index"] for s in streams if s.get("codec_type") == wanted and not _attached_pic(s))
    data, errors = _ffprobe(link, say, "-select_streams", str(index), "-read_intervals", f"%+#{_DECODE_PACKETS}",
                            "-show_entries", "frame=width,height,nb_samples")
    if data is None or not data.get("frames") or errors:
        why = plain_reason(errors[-1]) if errors else "no frame came out"
        raise say(CorruptMedia, f"could not be decoded ({why}); export it again or use another file")


def _attached_pic(stream: dict[str, Any]) -> bool:
    """Cover art in an MP3 or M4A shows up as a one-frame video stream; it is not a picture to animate."""
    return bool(_int(stream.get("disposition", {}).get("attached_pic")))


def _fps(rate: object) -> float:
    try:
        value = Fraction(str(rate))
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _int(value: object) -> int:
    return int(_float(value))
