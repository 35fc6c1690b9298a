"""How long media really is, from its packets: a container header can claim anything.

An MP3's Xing/Info frame count or a Matroska ``Duration`` element is a number the file's author wrote;
the packets are what a decoder will actually get. Reading them demuxes the whole file but decodes
nothing, and this module stops reading as soon as a limit is passed, so refusing a 60-minute file
against a 5-minute limit costs about 5 minutes' worth of packets. ffprobe's output is read line by
line (never held whole) and its error output goes to a file of which only the end is read, so neither
grows with the file.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import IO

PACKET_ARGS = ("-show_entries", "packet=codec_type,stream_index,pts_time,dts_time,duration_time",
               "-of", "compact=p=0")
"""ffprobe options that print one ``key=value|…`` line per packet; add them to the command given to ``read``."""
_ERROR_TAIL = 64 * 1024  # bytes of ffprobe's error output that are kept
PRIMING_S = 1.0
"""Negative timestamps down to this are encoder priming, which decoders drop; further down they count as length."""


@dataclass
class StreamPackets:
    """What one stream's packets cover."""

    codec_type: str = ""
    count: int = 0
    first: float = math.inf
    end: float = -math.inf
    total: float = 0.0
    """Sum of the packet durations."""

    @property
    def duration(self) -> float:
        """The span of the timestamps, or the sum of the durations where that is longer (packets that overlap or
        share a timestamp; ffprobe prints each duration to the microsecond, so that much per packet is slack).

        Encoder priming (AAC, Vorbis, Opus) sits at negative timestamps that decoders drop: up to
        ``PRIMING_S`` of it is not counted, so a 300.0 s M4A measures 300.0 s, not 300.023 s.
        """
        span = self.end - self.first if self.end > self.first else 0.0
        if self.total - span > self.count * 1e-6:
            return round(self.total, 6)
        start = max(self.first, 0.0) if self.first >= -PRIMING_S else self.first
        return round(max(self.end - start, 0.0), 6)

    def add(self, codec_type: str, stamp: float | None, duration: float) -> None:
        self.codec_type = self.codec_type or codec_type
        self.count += 1
        self.total += duration
        if stamp is not None:
            self.first = min(self.first, stamp)
            self.end = max(self.end, stamp + duration)


@dataclass
class Packets:
    streams: dict[int, StreamPackets] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """ffprobe's error lines (the last ones, if there were many)."""
    returncode: int = 0
    stopped: str | None = None
    """Why reading stopped before the end: ``"duration"`` or ``"frames"``; None when the whole file was read."""
    timed_out: bool = False

    def duration(self, ignore: Collection[int] = ()) -> float:
        """The longest stream, leaving out ``ignore`` (cover art)."""
        return max((s.duration for i, s in self.streams.items() if i not in ignore), default=0.0)


def read(cmd: Sequence[str], *, max_duration_s: float = math.inf, max_video_packets: int | None = None,
         ignore: Collection[int] = (), timeout_s: float = 30.0) -> Packets:
    """Run ``cmd`` (an ffprobe command including ``PACKET_ARGS``) and tally its packets per stream.

    Stops (and kills ffprobe) once a stream not in ``ignore`` covers more than ``max_duration_s`` or a video
    stream has more than ``max_video_packets`` packets, or after ``timeout_s``.
    """
    result = Packets()
    expired = threading.Event()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout_s, expire)
        timer.start()
        try:
            for line in proc.stdout:
                index, stream = _tally(line, result.streams)
                if stream is None or index in ignore:
                    continue
                if stream.duration > max_duration_s:
                    result.stopped = "duration"
                    break
                if max_video_packets is not None and stream.codec_type == "video" and stream.count > max_video_packets:
                    result.stopped = "frames"
                    break
        finally:
            timer.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            result.returncode = proc.wait()
        result.timed_out = expired.is_set() and result.stopped is None
        result.errors = _tail_lines(err)
    return result


def _tally(line: bytes, streams: dict[int, StreamPackets]) -> tuple[int, StreamPackets | None]:
    """Add one packet line to its stream; lines without a stream index (empty side-data sections) are skipped."""
    fields = dict(part.split(b"=", 1) for part in line.strip().split(b"|") if b"=" in part)
    try:
        index = int(fields[b"stream_index"])
    except (KeyError, ValueError):
        return -1, None
    stamp = _number(fields.get(b"pts_time"))
    if stamp is None:
        stamp = _number(fields.get(b"dts_time"))
    stream = streams.setdefault(index, StreamPackets())
    stream.add(fields.get(b"codec_type", b"").decode(errors="replace"), stamp,
               max(_number(fields.get(b"duration_time")) or 0.0, 0.0))
    return index, stream


def _number(value: bytes | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _tail_lines(handle: IO[bytes]) -> list[str]:
    size = handle.seek(0, 2)
    handle.seek(max(0, size - _ERROR_TAIL))
    lines = handle.read().decode(errors="replace").splitlines()
    if size > _ERROR_TAIL:
        lines = lines[1:]  # the first one is cut
    return [line.strip() for line in lines if line.strip()]
