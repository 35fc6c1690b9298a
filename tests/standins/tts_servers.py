"""Real HTTP stand-ins for the TTS servers users plug in, on 127.0.0.1 with an ephemeral port.

They follow the documented wire formats (OpenAI ``/v1/audio/speech``; HeyGem's fish-speech
``/v1/invoke`` and ``/v1/preprocess_and_tran``), answer with real speech from the espeak backend,
record every request, and can be told to fail or to hang so clients' error paths get exercised.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import wave
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from engine.tts.base import SynthesisRequest
from engine.tts.espeak import EspeakBackend

Reply = tuple[int, str, bytes]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def speech_samples(text: str, sample_rate: int) -> np.ndarray:
    """eSpeak speech resampled (linearly: good enough for a stand-in) to ``sample_rate``."""
    speech = EspeakBackend().synthesize(SynthesisRequest(text=text or "hello", lang="en"))
    n_out = max(1, round(len(speech.samples) * sample_rate / speech.sample_rate))
    src_t = np.arange(len(speech.samples)) / speech.sample_rate
    return np.interp(np.arange(n_out) / sample_rate, src_t, speech.samples).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def encode(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encode with the bundled ffmpeg (mp3, flac, opus, aac), as real servers do."""
    import imageio_ffmpeg

    container = {"opus": "ogg", "aac": "adts"}.get(fmt, fmt)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "s16le",
           "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"]
    if fmt == "opus":
        cmd += ["-c:a", "libopus", "-ar", "48000"]
    cmd += ["-f", container, "pipe:1"]
    raw = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return subprocess.run(cmd, input=raw, capture_output=True, check=True).stdout


class StandinServer:
    """Base stand-in: a ThreadingHTTPServer in a daemon thread. Subclasses implement ``route``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.failure: tuple[int, str] | None = None
        self.hang_s = 0.0
        self.override: Reply | None = None
        self._released = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandinServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, status: int = 500, message: str = "internal error") -> None:
        """Answer every request with ``status`` and ``message`` in the server's error format."""
        self.failure = (status, message)

    def hang(self, seconds: float) -> None:
        """Wait this long before answering (cut short by ``stop``), to trip client timeouts."""
        self.hang_s = seconds

    def reply_with(self, body: bytes, content_type: str, status: int = 200) -> None:
        """Answer every request with this body instead of the normal reply."""
        self.override = (status, content_type, body)

    def error_reply(self, status: int, message: str) -> Reply:
        return status, "application/json", json.dumps({"detail": message}).encode()

    def route(self, req: RecordedRequest) -> Reply:
        raise NotImplementedError

    def handle(self, req: RecordedRequest) -> Reply:
        self.requests.append(req)
        if self.hang_s:
            self._released.wait(self.hang_s)
        if self.failure:
            return self.error_reply(*self.failure)
        if self.override:
            return self.override
        try:
            return self.route(req)
        except (ValueError, KeyError, TypeError) as exc:
            return self.error_reply(400, f"bad request: {exc}")


def _handler_for(server: StandinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = RecordedRequest(self.command, self.path, headers, body)
            status, ctype, payload = server.handle(req)
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


class OpenAITTSServer(StandinServer):
    """OpenAI ``POST /v1/audio/speech``; ``GET /v1/audio/voices`` only when ``voice_ids`` is set (Kokoro)."""

    def __init__(self, *, api_key: str | None = None, sample_rate: int = 24000,
                 voice_ids: list[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.sample_rate = sample_rate
        self.voice_ids = voice_ids
        self.force_format: str | None = None

    def error_reply(self, status: int, message: str) -> Reply:
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return status, "application/json", json.dumps(body).encode()

    def route(self, req: RecordedRequest) -> Reply:
        if self.api_key and req.headers.get("authorization") != f"Bearer {self.api_key}":
            return self.error_reply(401, "Incorrect API key provided")
        if req.method == "GET" and req.path == "/v1/audio/voices" and self.voice_ids is not None:
            return 200, "application/json", json.dumps({"voices": self.voice_ids}).encode()
        if req.method != "POST" or req.path != "/v1/audio/speech":
            return 404, "application/json", b'{"detail": "Not Found"}'
        body = req.json()
        for name in ("model", "input", "voice"):
            if not body.get(name):
                return self.error_reply(400, f"'{name}' is a required property")
        if self.voice_ids is not None and body["voice"] not in self.voice_ids:
            return self.error_reply(400, f"voice {body['voice']!r} not found")
        samples = speech_samples(body["input"], self.sample_rate)
        fmt = self.force_format or body.get("response_format", "mp3")
        if fmt == "wav":
            return 200, "audio/wav", wav_bytes(samples, self.sample_rate)
        if fmt == "pcm":
            return 200, "audio/pcm", (samples * 32767).astype("<i2").tobytes()
        return 200, f"audio/{fmt}", encode(samples, self.sample_rate, fmt)


class HeyGemTTSServer(StandinServer):
    """HeyGem's fish-speech service: ``/v1/invoke`` answers WAV bytes, ``/v1/preprocess_and_tran`` JSON."""

    def __init__(self, *, sample_rate: int = 44100) -> None:
        super().__init__()
        self.sample_rate = sample_rate

    def error_reply(self, status: int, message: str) -> Reply:
        return status, "application/json", json.dumps({"code": -1, "msg": message}).encode()

    def route(self, req: RecordedRequest) -> Reply:
        if req.method == "POST" and req.path == "/v1/preprocess_and_tran":
            clip = req.json()["reference_audio"].split("/")[-1]
            reply = {"code": 0, "asr_format_audio_url": f"/code/data/asr_{clip}",
                     "reference_audio_text": "this is the reference clip"}
            return 200, "application/json", json.dumps(reply).encode()
        if req.method != "POST" or req.path != "/v1/invoke":
            return 404, "application/json", b'{"detail": "Not Found"}'
        body = req.json()
        if not body.get("text") or not body.get("reference_audio"):
            return self.error_reply(400, "text and reference_audio are required")
        return 200, "application/octet-stream", wav_bytes(speech_samples(body["text"], self.sample_rate),
                                                          self.sample_rate)
