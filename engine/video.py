"""Video in and out through the ffmpeg binary that imageio-ffmpeg ships: raw frames over pipes."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import imageio_ffmpeg
import numpy as np

from .errors import CorruptMedia
from .media import plain_reason

_TEMPLATE_DAMAGE = ("/concat @", "[h264 @", "Invalid data found when processing input", "Error during demuxing",
                    "moov atom not found")
"""ffmpeg's words for an input it could not read; with a background, that input is the avatar's template."""

# swscale's default YUV<->RGB path darkens every round trip by about 2 levels; accurate rounding
# and full chroma interpolation make an encode/decode cycle unbiased.
SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _widen_pipe(fd: int, frame_bytes: int) -> None:
    """Grow a pipe towards one frame: fewer, larger transfers cost far less kernel time."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as fh:
            limit = int(fh.read())
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), min(limit, max(frame_bytes, 65536)))
    except (OSError, ValueError):
        return


def _input(path: Path, concat: bool) -> list[str]:
    """``-i path``, or a concat-demuxer playlist (its entries are paths this package wrote)."""
    return ["-f", "concat", "-safe", "0", "-i", str(path)] if concat else ["-i", str(path)]


def read_frames(path: Path, width: int, height: int, *, start_s: float = 0.0,
                max_frames: int | None = None, fps: float | None = None,
                pix_fmt: str = "bgr24", concat: bool = False,
                crop: tuple[int, int, int, int] | None = None, max_s: float | None = None) -> Iterator[np.ndarray]:
    """Decode ``path`` to frames of ``width``x``height`` (scaled if the stream differs).

    ``bgr24`` gives (h, w, 3) images; ``yuv420p`` gives I420 buffers of shape (h*3/2, w), which
    skips the colour conversion entirely when the source is already 4:2:0. ``crop`` (x, y, w, h)
    cuts a region out instead of scaling; ``concat`` reads a concat-demuxer playlist. ``max_s`` stops
    ffmpeg after that much video (``-t``), whatever the file's header says about its length.
    """
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error"]
    if start_s > 0:
        cmd += ["-ss", f"{start_s:.6f}"]
    cmd += [*_input(path, concat), "-map", "0:v:0", "-an", "-sn"]
    if crop is not None:
        x, y, cw, ch = crop
        width, height = cw, ch
        cmd += ["-vf", f"crop={cw}:{ch}:{x}:{y}", "-fps_mode", "passthrough"]
    elif fps:
        cmd += ["-vf", f"fps={fps},scale={width}:{height}:flags={SWS_FLAGS}"]
    else:
        cmd += ["-vf", f"scale={width}:{height}:flags={SWS_FLAGS}", "-fps_mode", "passthrough"]
    if max_frames is not None:
        cmd += ["-frames:v", str(max_frames)]
    if max_s is not None:
        cmd += ["-t", f"{max_s:.6f}"]
    cmd += ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-"]
    shape = (height, width, 3) if pix_fmt == "bgr24" else (height * 3 // 2, width)
    size = int(np.prod(shape))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, bufsize=size)
        assert proc.stdout is not None
        _widen_pipe(proc.stdout.fileno(), size)
        try:
            while True:
                buf = proc.stdout.read(size)
                if len(buf) < size:
                    break
                yield np.frombuffer(buf, np.uint8).reshape(shape)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        if code not in (0, -9):
            err.seek(0)
            message = err.read(1 << 16).decode(errors="replace").strip().splitlines()
            raise CorruptMedia(f"{path.name} could not be decoded ({plain_reason(message[0]) if message else code})")


_SAFE_PATH = re.compile(r"^[\w./-]+$")


@dataclass(frozen=True)
class BurnIn:
    """Subtitles drawn into the picture by libass (ffmpeg's ``subtitles`` filter)."""

    srt: Path
    font: str
    font_dir: Path | None

    def filter(self) -> str:
        # Filter arguments are parsed by ffmpeg; only plain paths are passed (the caller writes the
        # .srt to a temp dir), and the font name is reduced to letters, digits and spaces.
        if not _SAFE_PATH.match(str(self.srt)):
            raise ValueError(f"unsafe subtitle path {self.srt}")
        font = re.sub(r"[^\w ]", "", self.font)
        style = f"FontName={font}\\,FontSize=18\\,Outline=1\\,Shadow=0\\,MarginV=18"
        parts = [f"subtitles=filename={self.srt}", f"force_style={style}"]
        if self.font_dir is not None and _SAFE_PATH.match(str(self.font_dir)) and self.font_dir.is_dir():
            parts.insert(1, f"fontsdir={self.font_dir}")
        return ":".join(parts)


@dataclass(frozen=True)
class Background:
    """Full frames the encoder decodes itself (a playlist of template files); the frames written
    to the pipe are then patches of ``width``x``height`` laid over it at (``x``, ``y``)."""

    playlist: Path
    width: int
    height: int
    x: int
    y: int


class VideoWriter:
    """Encode frames (BGR, or I420 with ``pix_fmt="yuv420p"``) and an audio file to an MP4:
    H.264 High, yuv420p, AAC 48 kHz, +faststart.

    Writes to a temporary name beside ``out`` and renames on success, so a failed render never
    leaves a half-written file under the final name.
    """

    def __init__(self, out: Path, *, width: int, height: int, fps: float, audio: Path | None,
                 out_size: tuple[int, int] | None = None, crf: int = 20, preset: str = "veryfast",
                 audio_bitrate: str = "128k", metadata: dict[str, str] | None = None,
                 keyframe_interval: int | None = None, fast_decode: bool = False,
                 pix_fmt: str = "bgr24", background: Background | None = None,
                 max_frames: int | None = None, poster: tuple[Path, int] | None = None,
                 burn_in: BurnIn | None = None) -> None:
        self.out = out
        self.background = background
        self.tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
        self.poster = poster[0] if poster else None
        self.poster_tmp = out.with_name(f".{out.stem}.partial.jpg")
        self.frame_bytes = width * height * 3 if pix_fmt == "bgr24" else width * height * 3 // 2
        self.frames_written = 0
        cmd = [ffmpeg_exe(), "-nostdin", "-y", "-v", "error"]
        if background is not None:
            cmd += _input(background.playlist, concat=True)
        cmd += ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-"]
        if audio is not None:
            cmd += ["-i", str(audio)]
        canvas = (background.width, background.height) if background else (width, height)
        chain = f"[0:v][1:v]overlay=x={background.x}:y={background.y}:shortest=1" if background else "[0:v]null"
        if out_size and out_size != canvas:
            chain += f",scale={out_size[0]}:{out_size[1]}:flags=lanczos+accurate_rnd+full_chroma_int"
        if burn_in is not None:
            chain += "," + burn_in.filter()
        if poster:
            # The poster comes out of the same encoder pass: no second decode of the result.
            chain += f",split[v][pv];[pv]select=eq(n\\,{poster[1]})[p]"
        else:
            chain += "[v]"
        cmd += ["-filter_complex", chain, "-map", "[v]"]
        if audio is not None:
            cmd += ["-map", f"{2 if background else 1}:a:0", "-c:a", "aac", "-b:a", audio_bitrate, "-ar", "48000"]
        if max_frames is not None:
            cmd += ["-frames:v", str(max_frames)]
        cmd += ["-sws_flags", SWS_FLAGS]
        cmd += ["-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p", "-preset", preset,
                "-crf", str(crf), "-movflags", "+faststart"]
        if fast_decode:
            cmd += ["-tune", "fastdecode"]
        if keyframe_interval:
            cmd += ["-g", str(keyframe_interval), "-keyint_min", str(keyframe_interval), "-sc_threshold", "0"]
        for key, value in (metadata or {}).items():
            cmd += ["-metadata", f"{key}={value}"]
        cmd += ["-f", "mp4", str(self.tmp)]
        if poster:
            cmd += ["-map", "[p]", "-frames:v", "1", "-q:v", "3", "-update", "1", "-f", "image2", str(self.poster_tmp)]
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the encoder process
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._err, bufsize=self.frame_bytes)
        assert self.proc.stdin is not None
        _widen_pipe(self.proc.stdin.fileno(), self.frame_bytes)

    def write(self, frame: np.ndarray) -> None:
        assert self.proc.stdin is not None
        data = np.ascontiguousarray(frame, dtype=np.uint8)
        if data.nbytes != self.frame_bytes:
            raise ValueError(f"frame has {data.nbytes} bytes, expected {self.frame_bytes}")
        try:
            self.proc.stdin.write(memoryview(data).cast("B"))
        except BrokenPipeError as exc:
            raise self._failure("the encoder stopped") from exc
        self.frames_written += 1

    def _failure(self, what: str) -> Exception:
        """Say why ffmpeg stopped: a full disk, a damaged template (the avatar's fault), or anything else."""
        log = self._stderr()
        last = plain_reason(log.splitlines()[-1]) if log else "no message"
        if "No space left on device" in log:
            return OSError(errno.ENOSPC, f"No space left on device while writing {self.out.name}")
        if self.background is not None and any(mark in log for mark in _TEMPLATE_DAMAGE):
            return CorruptMedia(f"the avatar's template video is damaged and stopped decoding mid-render ({last}); "
                                "add the avatar again from its original file", field="avatar")
        return RuntimeError(f"{what}: {log}")

    def _stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace").strip()[-2000:]

    def close(self) -> Path:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait()
        if code != 0:
            failure = self._failure(f"ffmpeg failed to encode {self.out.name}")
            self.abort()
            raise failure
        self._err.close()
        os.replace(self.tmp, self.out)
        if self.poster:
            os.replace(self.poster_tmp, self.poster)
        return self.out

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        self.tmp.unlink(missing_ok=True)
        self.poster_tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()


def write_jpeg(frame: np.ndarray, path: Path, quality: int = 90) -> Path:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("could not encode JPEG")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return path


def even_size(width: int, height: int, target_height: int | None) -> tuple[int, int]:
    """Output size for ``source|720p|1080p``: H.264 in yuv420p needs even dimensions."""
    if target_height is None:
        return width - width % 2, height - height % 2
    scaled_w = round(width * target_height / height)
    return scaled_w - scaled_w % 2, target_height - target_height % 2
