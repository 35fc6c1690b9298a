"""The few ffmpeg jobs the nodes need around the engine: a frame batch as a template video, a logo
overlay, and reading frames back. ffmpeg is the binary the engine already ships (imageio-ffmpeg), so the
pack adds no system dependency and downloads nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

CORNERS = ["bottom-right", "bottom-left", "top-right", "top-left"]
_POSITION = {"top-left": "{m}:{m}", "top-right": "W-w-{m}:{m}", "bottom-left": "{m}:H-h-{m}",
             "bottom-right": "W-w-{m}:H-h-{m}"}


def frames_to_video(frames_bgr: list[np.ndarray], fps: float, out: Path) -> Path:
    """A frame batch as a lossless-enough H.264 file the engine can preprocess as a video avatar."""
    height, width = frames_bgr[0].shape[:2]
    width, height = width - width % 2, height - height % 2
    writer = imageio_ffmpeg.write_frames(
        str(out), (width, height), fps=fps, codec="libx264", pix_fmt_in="bgr24", pix_fmt_out="yuv420p",
        quality=None, output_params=["-crf", "12", "-preset", "veryfast"], macro_block_size=1,
        ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames_bgr:
        writer.send(np.ascontiguousarray(frame[:height, :width]))
    writer.close()
    return out


def logo_size(logo_hw: tuple[int, int], frame_width: int, scale: float) -> tuple[int, int]:
    """The logo's on-screen width and height: ``scale`` of the frame's width, its own aspect ratio kept.

    Computed here rather than in ffmpeg's scale2ref, whose variable names changed meaning between releases.
    """
    height, width = logo_hw
    out_w = max(2, round(frame_width * scale))
    return out_w, max(2, round(out_w * height / width))


def _logo_graph(corner: str, size: tuple[int, int]) -> str:
    """One filter graph for the video and its poster, so the two outputs show the same logo in the same place."""
    position = _POSITION[corner].format(m="20")
    return f"[1:v]format=rgba,scale={size[0]}:{size[1]}[logo];[0:v][logo]overlay={position}:format=auto[v]"


def _ffmpeg(args: list[str]) -> None:
    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not overlay the logo: {done.stderr.strip()[-400:]}")


def overlay_logo(video: Path, logo_png: Path, corner: str, size: tuple[int, int], out: Path) -> Path:
    """The logo at ``size`` (see ``logo_size``) in ``corner``; audio copied untouched."""
    graph = _logo_graph(corner, size) + ";[v]format=yuv420p[o]"
    _ffmpeg(["-i", str(video), "-i", str(logo_png), "-filter_complex", graph, "-map", "[o]", "-map", "0:a?",
             "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-c:a", "copy", "-movflags", "+faststart",
             str(out)])
    return out


def overlay_logo_image(picture: Path, logo_png: Path, corner: str, size: tuple[int, int], out: Path) -> Path:
    """The same logo on a still (the poster), as a PNG."""
    _ffmpeg(["-i", str(picture), "-i", str(logo_png), "-filter_complex", _logo_graph(corner, size),
             "-map", "[v]", "-frames:v", "1", str(out)])
    return out


def read_frames(video: Path) -> list[np.ndarray]:
    """Every frame of a rendered video, RGB."""
    capture = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise RuntimeError(f"{video.name} has no readable frames")
    return frames


def read_image(path: Path) -> np.ndarray:
    """One picture (the render's poster), RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"{path.name} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
