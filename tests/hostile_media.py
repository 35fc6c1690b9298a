"""Media files that lie or sit at the edges, built with ffmpeg plus byte-level edits (issue #10).

- ``lying_mp3``: a real MP3 of an hour whose Xing/Info frame says it holds 16 frames (0.4 s). The audio is a
  10-second piece encoded without the bit reservoir (so every frame stands alone) and repeated; the Info frame
  comes from the same encode with the header on, patched to claim 16 frames in a file of its real size.
- ``lying_mkv``: a real Matroska video of 400 s whose Segment/Info/Duration element says 1 s.
- ``packed_mkv``: 100 video frames whose timestamps fit in about a second.
- ``one_pixel_video``: a 1x1 H.264 video.
- ``many_channel_wav``: a PCM WAV with any number of channels (Python's ``wave`` writer), each the same tone.
"""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tests.conftest import ffmpeg

_PIECE_S = 10
_EBML_SEGMENT, _EBML_INFO, _EBML_CLUSTER = 0x18538067, 0x1549A966, 0x1F43B675
_EBML_TIMESCALE, _EBML_DURATION = 0x2AD7B1, 0x4489


def lying_mp3(path: Path, minutes: int = 60, claimed_frames: int = 16, rate: int = 22050,
              bitrate: str = "32k", channels: int = 1) -> Path:
    """``minutes`` of MP3 whose Info frame claims ``claimed_frames`` frames."""
    encode = ("-f", "lavfi", "-i", f"sine=frequency=220:duration={_PIECE_S}:sample_rate={rate}", "-ac", str(channels),
              "-c:a", "libmp3lame", "-b:a", bitrate, "-reservoir", "0", "-id3v2_version", "0")
    headed, bare = path.with_suffix(".headed.mp3"), path.with_suffix(".bare.mp3")
    ffmpeg(*encode, str(headed))
    ffmpeg(*encode, "-write_xing", "0", str(bare))
    frames = bare.read_bytes()
    whole = headed.read_bytes()
    assert whole.endswith(frames), "the encoder is not deterministic"
    info = bytearray(whole[: len(whole) - len(frames)])
    tag = max(info.find(b"Info"), info.find(b"Xing"))
    flags = int.from_bytes(info[tag + 4:tag + 8], "big")
    assert tag > 0 and flags & 0b11 == 0b11, "expected an Info frame with frame and byte counts"
    piece_s = int.from_bytes(info[tag + 8:tag + 12], "big") * (1152 if rate >= 32000 else 576) / rate  # with padding
    repeats = round(minutes * 60 / piece_s)
    info[tag + 8:tag + 12] = claimed_frames.to_bytes(4, "big")
    info[tag + 12:tag + 16] = (len(info) + repeats * len(frames)).to_bytes(4, "big")  # the size is true
    with path.open("wb") as out:
        out.write(info)
        for _ in range(repeats):
            out.write(frames)
    headed.unlink()
    bare.unlink()
    return path


def lying_mkv(path: Path, seconds: float = 400, claimed_s: float = 1.0, size: str = "160x120", fps: int = 5) -> Path:
    """A Matroska video of ``seconds`` whose Duration element says ``claimed_s``."""
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    data = bytearray(path.read_bytes())
    patched = False
    for element, body, size_ in _ebml(data, 0, len(data)):
        if element != _EBML_SEGMENT:
            continue
        for child, child_body, child_size in _ebml(data, body, body + size_):
            if child == _EBML_CLUSTER:
                break
            if child != _EBML_INFO:
                continue
            fields = {e: (b, s) for e, b, s in _ebml(data, child_body, child_body + child_size)}
            scale = int.from_bytes(data[slice(*_span(fields.get(_EBML_TIMESCALE)))], "big") or 1_000_000
            at, width = fields[_EBML_DURATION]
            data[at:at + width] = struct.pack(">d" if width == 8 else ">f", claimed_s * 1e9 / scale)
            patched = True
    assert patched, "no Duration element found"
    path.write_bytes(data)
    return path


def packed_mkv(path: Path) -> Path:
    """100 frames at a declared 25 fps whose timestamps fit in about 1 s: the first 25 a second apart, then 1 ms."""
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:duration=4", "-vf",
           "setpts='if(lt(N,25),N/25/TB,(1+(N-25)/1000)/TB)'", "-fps_mode", "passthrough", "-c:v", "libx264",
           "-preset", "ultrafast", str(path))
    return path


def one_pixel_video(path: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-vf", "scale=1:1", "-c:v", "libx264",
           "-pix_fmt", "yuv444p", str(path))
    return path


def many_channel_wav(path: Path, channels: int, seconds: float = 2.0, rate: int = 16000) -> Path:
    """A 16-bit WAV with ``channels`` channels, each holding the same 220 Hz tone at half scale."""
    t = np.arange(round(seconds * rate)) / rate
    tone = (np.sin(2 * np.pi * 220 * t) * 16384).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.repeat(tone, channels).tobytes())
    return path


def _ebml(data: bytearray, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(element id, body offset, body size) of the EBML elements in ``data[start:end]``."""
    pos = start
    while pos < end:
        element, id_len = _vint(data, pos, keep_marker=True)
        size, size_len = _vint(data, pos + id_len, keep_marker=False)
        body = pos + id_len + size_len
        yield element, body, size
        pos = body + size


def _vint(data: bytearray, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 8 - first.bit_length() + 1
    value = first if keep_marker else first & (0xFF >> length)
    for byte in data[pos + 1:pos + length]:
        value = value << 8 | byte
    return value, length


def _span(field: tuple[int, int] | None) -> tuple[int, int]:
    return (field[0], field[0] + field[1]) if field else (0, 0)
