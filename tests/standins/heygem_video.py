"""A stand-in for HeyGem's video service (``/easy/submit`` + ``/easy/query``) for offline tests.

It follows the documented wire format: reply ``{code, success, msg, data}`` with 10000 success,
10001 busy, 10002 parameter error, 10004 task not found, 10005 duplicate; ``data.status`` 1 running,
2 success (``result`` ``/code/data/temp/<code>-r.mp4``), 3 failed; a task is forgotten once its
terminal status has been read. Like the real service it runs one task at a time, writes a silent
``<code>-t.mp4`` first and muxes the audio into ``<code>-r.mp4``. Its "lip-sync" paints the lower
third of every frame red so tests can tell its output from the template.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

import imageio_ffmpeg

CONTAINER_DIR = "/code/data/temp"
OK, BUSY, PARAM_ERROR, NOT_FOUND, DUPLICATE = 10000, 10001, 10002, 10004, 10005
RUNNING, DONE, FAILED = 1, 2, 3


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class _Task:
    code: str
    polls: int = 0
    finished: bool = False
    error: str | None = None
    thread: threading.Thread | None = None


@dataclass
class HeyGemVideoStandIn:
    """Start with ``with HeyGemVideoStandIn(data_dir) as heygem:``; point the renderer at ``heygem.url``.

    ``busy_submits``: answer 10001 to that many submits first. ``fail_msg``: end with status 3.
    ``never_finish``: stay at status 1. ``polls_to_finish``: status 1 polls before the terminal one.
    ``result``: report this instead of the real result path. ``drop_frames``: cut frames off the end.
    """

    data_dir: Path
    busy_submits: int = 0
    fail_msg: str | None = None
    never_finish: bool = False
    polls_to_finish: int = 3
    result: str | None = None
    drop_frames: int = 0
    requests: list[Recorded] = field(default_factory=list)
    _tasks: dict[str, _Task] = field(default_factory=dict)
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
        for task in list(self._tasks.values()):
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
        for key, default in (("chaofen", 0), ("watermark_switch", 0), ("pn", 1)):
            if str(body.get(key, default)) not in ("0", "1"):
                return _reply(PARAM_ERROR, f"{key}参数异常")
        code = str(body["code"])
        with self._lock:
            if code in self._tasks:
                return _reply(DUPLICATE, "任务重复")
            if self.busy_submits > 0 or any(not t.finished for t in self._tasks.values()):
                self.busy_submits = max(0, self.busy_submits - 1)
                return _reply(BUSY, "忙碌中")
            task = _Task(code)
            self._tasks[code] = task
        if not self.never_finish:
            args = (task, str(body["video_url"]), str(body["audio_url"]))
            task.thread = threading.Thread(target=self._work, args=args, daemon=True)
            task.thread.start()
        return _reply(OK, "成功", {"code": code})

    def _query(self, code: str) -> dict[str, Any]:
        if not code:
            return _reply(PARAM_ERROR, "code参数缺失")
        with self._lock:
            task = self._tasks.get(code)
            if task is None:
                return _reply(NOT_FOUND, "任务不存在")
            task.polls += 1
            if not task.finished or task.polls <= self.polls_to_finish:
                progress = min(90, round(100 * (task.polls - 1) / max(self.polls_to_finish, 1)))
                return _reply(OK, "", {"code": code, "status": RUNNING, "progress": progress, "result": "",
                                       "msg": "处理中"})
            del self._tasks[code]
        if task.error is not None:
            return _reply(OK, "", {"code": code, "status": FAILED, "progress": 0, "result": "",
                                   "msg": task.error})
        result = self.result if self.result is not None else f"{CONTAINER_DIR}/{code}-r.mp4"
        return _reply(OK, "", {"code": code, "status": DONE, "progress": 100, "result": result, "msg": "成功",
                               "cost": 1, "video_duration": 1, "width": 0, "height": 0})

    def _resolve(self, name: str) -> Path:
        """HeyGem joins the name onto its temp dir, so a container path also works."""
        path = PurePosixPath(name)
        if path.is_absolute():
            path = path.relative_to(CONTAINER_DIR) if path.is_relative_to(CONTAINER_DIR) else path
        if path.is_absolute() or ".." in path.parts:
            raise FileNotFoundError(name)
        return self.data_dir / path

    def _work(self, task: _Task, video_url: str, audio_url: str) -> None:
        try:
            if self.fail_msg is not None:
                task.error = self.fail_msg
                return
            video, audio = self._resolve(video_url), self._resolve(audio_url)
            for path in (video, audio):
                if not path.is_file():
                    raise FileNotFoundError(f"{path.name} 文件不存在")
            silent = self.data_dir / f"{task.code}-t.mp4"
            ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-v", "error"]
            count = imageio_ffmpeg.count_frames_and_secs(str(video))[0] - self.drop_frames
            _run([*ffmpeg, "-i", str(video), "-an", "-frames:v", str(max(count, 1)),
                  "-vf", "drawbox=x=0:y=ih*2/3:w=iw:h=ih/3:color=red@1:t=fill",
                  "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(silent)])
            _run([*ffmpeg, "-i", str(audio), "-i", str(silent), "-map", "1:v", "-map", "0:a",
                  "-c:v", "copy", "-c:a", "aac", str(self.data_dir / f"{task.code}-r.mp4")])
        except Exception as exc:
            task.error = f"处理失败: {exc}"
        finally:
            task.finished = True


def _reply(code: int, msg: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """HeyGem marks busy and not-found as ``success: true`` too; clients must look at ``code``."""
    return {"code": code, "success": code in (OK, BUSY, NOT_FOUND), "msg": msg, "data": data or {}}


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace").strip()[-500:])

