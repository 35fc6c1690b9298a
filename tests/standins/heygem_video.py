"""A stand-in for HeyGem's video service (``/easy/submit`` + ``/easy/query``) that answers as the real one does.

Each rule, and where it comes from (the official client is duixcom/Duix.Heygem @8fd428d, renamed
Duix-Avatar @1328feb; the server is unpublished, so some rules come from users' reports or from a
community decompilation of an older build; see /work/shared/notes/heygem-real-service.md):

- Submit takes ``audio_url``, ``video_url``, ``code``, ``chaofen``, ``watermark_switch``, ``pn``
  (client ``video.js:259-268``) and replies ``{"code": 10000, "data": {}, "msg": 10000}``, the msg an
  integer (Duix-Avatar #579, #595); 10001 while another task runs: one task at a time (decompiled
  ``run_flag``).
- Codes are 9999 and 10000-10004 only (decompiled server; there is no 10005).
- Query replies carry ``data.status`` 1/2/3, ``data.progress`` jumping 20 -> 80 -> 100 and a failure's
  text in ``data.msg`` (``video.js:175-205``).
- The result is ``"/<code>-r.mp4"``, relative to the data folder (#359), and the file lies in ``temp/``
  (``video.js:191``, #588).
- Read once: after a terminal status has been answered the task is forgotten and the next query gets
  10004 (decompiled ``del_flag``; Comfyui_HeyGem #2).
- Length: the output follows the audio's length at the template's fps, rounded to an integer, and is a
  frame or two short; the template is looped as needed (decompilation, users' reports).
- Paths: bare names resolve in the data folder (``video.js:126``, ``voice.js:43,73``, ``model.js:50``);
  absolute paths are used as-is (#400); some images take only in-container paths (#559, #579, #595).
- Audio: newer images fail 22.05 and 24 kHz WAVs in their duration check with "三次获取音频时长失败"
  (#559, #574, #595).
- Leftovers: ``<code>_format.mp4``/``.wav`` and ``temp/<code>/`` with ``audio_data.npy`` and
  ``result.avi`` (#555), and ``result/param.json``; ``face2face/result/`` must exist (#528).
- Stalls: a task can stay at status 1 / progress 20 for ever, and every later submit gets 10001 until
  the container restarts (#466).

Its "lip-sync" paints the lower third of every frame red so tests can tell its output from the template.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import wave
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

import imageio_ffmpeg
import numpy as np

CONTAINER_DIR = "/code/data/temp"
ERROR, OK, BUSY, PARAM_ERROR, NOT_FOUND = 9999, 10000, 10001, 10002, 10004
RUNNING, DONE, FAILED = 1, 2, 3
REJECTED_RATES = (22050, 24000)
STAGE_SEEN_WAIT_S = 2.0


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Task:
    code: str
    progress: int = 20
    status: int = RUNNING
    result: str = ""
    msg: str = ""
    template_has_audio: bool | None = None
    audio_rate: int | None = None
    frames: int | None = None
    seen: dict[int, threading.Event] = field(default_factory=lambda: {20: threading.Event(), 80: threading.Event()})
    ended: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class HeyGemVideoStandIn:
    """Start with ``with HeyGemVideoStandIn(data_dir) as heygem:``; point the renderer at ``heygem.url``.

    ``busy_submits``: answer 10001 to that many submits first. ``fail_msg``: end with status 3.
    ``stall``: stay at progress 20 for ever (until ``restart``). ``hold``: stay at progress 20 until the
    event is set. ``accepts``: ``any`` (bare names and absolute paths) or ``container`` (absolute
    in-container paths only). ``container_dir``: the data folder as the container sees it.
    ``short_frames``: how many frames short the output is. ``drop_queries``: close that many query
    connections without an answer. ``reveal``: write the result under a hidden name and show it only
    once this event is set (a network share's delay). ``result``: report this instead of the real one.
    """

    data_dir: Path
    busy_submits: int = 0
    fail_msg: str | None = None
    stall: bool = False
    hold: threading.Event | None = None
    accepts: str = "any"
    container_dir: str = CONTAINER_DIR
    short_frames: int = 1
    drop_queries: int = 0
    reveal: threading.Event | None = None
    result: str | None = None
    requests: list[Recorded] = field(default_factory=list)
    tasks: dict[str, _Task] = field(default_factory=dict)
    _live: dict[str, _Task] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def submits(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/easy/submit"]

    def restart(self) -> None:
        """What ``docker restart`` does: every task is forgotten, a stalled one included."""
        with self._lock:
            self._live.clear()
            self.stall = False

    def start(self) -> HeyGemVideoStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in._handle(self, "GET")

            def do_POST(self) -> None:
                stand_in._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="heygem-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.hold is not None:
            self.hold.set()
        if self.reveal is not None:
            self.reveal.set()
        for task in list(self.tasks.values()):
            if task.thread is not None:
                task.thread.join(timeout=30)

    def __enter__(self) -> HeyGemVideoStandIn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urlparse(handler.path)
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        body: Any = None
        if method == "POST":
            raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append(Recorded(method, parsed.path, query, body))
            drop = parsed.path == "/easy/query" and self.drop_queries > 0
            if drop:
                self.drop_queries -= 1
        if drop:
            handler.close_connection = True  # no status line: the client sees the connection dropped
            return
        if method == "POST" and parsed.path == "/easy/submit":
            reply = self._submit(body)
        elif method == "GET" and parsed.path == "/easy/query":
            reply = self._query(query.get("code", ""))
        else:
            handler.send_error(404)
            return
        data = json.dumps(reply, ensure_ascii=False).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _submit(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            return _reply(PARAM_ERROR, "参数异常")
        for key in ("audio_url", "video_url", "code"):
            if not body.get(key):
                return _reply(PARAM_ERROR, f"{key}参数缺失")
        code = str(body["code"])
        with self._lock:
            if self.busy_submits > 0 or any(t.status == RUNNING for t in self._live.values()):
                self.busy_submits = max(0, self.busy_submits - 1)
                return _reply(BUSY, BUSY)
            task = _Task(code)
            self._live[code] = self.tasks[code] = task
        if not self.stall:
            args = (task, str(body["video_url"]), str(body["audio_url"]))
            task.thread = threading.Thread(target=self._work, args=args, daemon=True)
            task.thread.start()
        return _reply(OK, OK)

    def _query(self, code: str) -> dict[str, Any]:
        if not code:
            return _reply(PARAM_ERROR, "code参数缺失")
        with self._lock:
            task = self._live.get(code)
            if task is None:
                return _reply(NOT_FOUND, "任务不存在")
            data = {"code": code, "status": task.status, "progress": task.progress, "result": task.result,
                    "msg": task.msg}
            if task.status != RUNNING:
                del self._live[code]
            elif task.progress in task.seen:
                task.seen[task.progress].set()
        return _reply(OK, OK, data)

    def _resolve(self, name: str) -> Path:
        path = PurePosixPath(name)
        if not path.is_absolute():
            if self.accepts == "container" or ".." in path.parts:
                raise FileNotFoundError(f"{name} 文件不存在")
            return self.data_dir / path
        if path.is_relative_to(self.container_dir) and ".." not in path.parts:
            return self.data_dir / path.relative_to(self.container_dir)
        raise FileNotFoundError(f"{name} 文件不存在")

    def _advance(self, task: _Task, progress: int) -> None:
        """The next stage; a stage stays until a query has shown it (or briefly, if nobody asks)."""
        task.seen[task.progress].wait(STAGE_SEEN_WAIT_S)
        task.progress = progress

    def _work(self, task: _Task, video_url: str, audio_url: str) -> None:
        work = self.data_dir / task.code
        try:
            if self.hold is not None:
                self.hold.wait()
            if self.fail_msg is not None:
                raise RuntimeError(self.fail_msg)
            video, audio = self._resolve(video_url), self._resolve(audio_url)
            for path in (video, audio):
                if not path.is_file():
                    raise FileNotFoundError(f"{path.name} 文件不存在")
            with wave.open(str(audio), "rb") as wav:
                task.audio_rate = wav.getframerate()
                audio_s = wav.getnframes() / wav.getframerate()
            if task.audio_rate in REJECTED_RATES:
                raise RuntimeError("三次获取音频时长失败")
            ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-v", "error"]
            task.template_has_audio = _has_audio(video)
            fps = _fps(video)
            _run([*ffmpeg, "-i", str(video), "-c", "copy", str(self.data_dir / f"{task.code}_format.mp4")])
            _run([*ffmpeg, "-i", str(audio), "-ar", "16000", "-ac", "1",
                  str(self.data_dir / f"{task.code}_format.wav")])
            work.mkdir()
            np.save(work / "audio_data.npy", np.zeros((max(1, round(audio_s * 50)), 256), np.float32))
            task.frames = max(1, round(audio_s * fps) - self.short_frames)
            _run([*ffmpeg, "-stream_loop", "-1", "-i", str(video), "-an", "-frames:v", str(task.frames),
                  "-vf", "drawbox=x=0:y=ih*2/3:w=iw:h=ih/3:color=red@1:t=fill",
                  "-c:v", "mjpeg", str(work / "result.avi")])
            self._advance(task, 80)
            result_dir = self.data_dir.parent / "result"
            if not result_dir.is_dir():
                raise FileNotFoundError(f"{result_dir} 不存在")
            (result_dir / "param.json").write_text(json.dumps({"code": task.code}))
            final = self.data_dir / f"{task.code}-r.mp4"
            target = final.with_name(f".{final.name}.hidden") if self.reveal is not None else final
            _run([*ffmpeg, "-i", str(work / "result.avi"), "-i", str(audio), "-map", "0:v", "-map", "1:a",
                  "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mp4",
                  str(target)])
            self._advance(task, 100)
            task.result = self.result if self.result is not None else f"/{final.name}"
            task.status = DONE
            if self.reveal is not None:
                threading.Thread(target=self._show, args=(target, final), daemon=True).start()
        except Exception as exc:
            task.msg, task.status = str(exc), FAILED
        finally:
            task.ended.set()

    def _show(self, hidden: Path, final: Path) -> None:
        assert self.reveal is not None
        self.reveal.wait()
        if hidden.exists():
            hidden.rename(final)


def _reply(code: int, msg: int | str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "data": data or {}, "msg": msg}


def _probe(path: Path) -> str:
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)],
                         capture_output=True, timeout=60, check=False)
    return out.stderr.decode(errors="replace")


def _has_audio(path: Path) -> bool:
    return "Audio:" in _probe(path)


def _fps(path: Path) -> float:
    match = re.search(r"([\d.]+) fps", _probe(path))
    return float(match.group(1)) if match else 25.0


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace").strip()[-500:])
