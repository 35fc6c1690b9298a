"""How long the plugin's side of handing a video file to Dify takes, for the sizes Dify accepts.

The SDK turns a blob message into 8 KiB ``blob_chunk`` session messages, each a base64 JSON line on stdout
(dify_plugin ``Plugin._execute_request``); the daemon reads them line by line. This builds the same messages
with the SDK's own classes and serializes them with its response writer, into a pipe that a reader process
drains and decodes as the daemon's scanner would (JSON, then base64), and times a blob of 10, 30 and 50 MiB
from the first chunk to the reader's last byte: the plugin's share of what tools/call_limits.py keeps for the
hand-over (HANDOVER_S, 15 s). Dify's share (merging the chunks, storing the file) comes on top; it does not
run here.

Run with the plugin's environment: ``.venv-plugin/bin/python tests/bench/plugin_handover_bench.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import IO

from dify_plugin.core.server.__base.response_writer import ResponseWriter
from dify_plugin.entities.tool import ToolInvokeMessage

MIB = 1024 * 1024
CHUNK = 8192
SIZES_MIB = (10, 30, 50)
READER = r"""
import base64, json, sys
got = 0
for line in sys.stdin.buffer:
    if line.strip():
        message = json.loads(line)["data"]["data"]["message"]
        got += len(base64.b64decode(message["blob"]))
        if message["end"]:
            break
print(got)
"""


class PipeWriter(ResponseWriter):
    """The SDK's response writer (its serialization), writing to the reader's pipe instead of stdout."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe

    def write(self, data: str) -> None:
        self.pipe.write(data.encode())
        self.pipe.flush()

    def done(self) -> None:
        return None


def hand_over(size: int) -> tuple[float, int]:
    reader = subprocess.Popen([sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert reader.stdin is not None and reader.stdout is not None
    blob, blob_id, session_id = os.urandom(size), uuid.uuid4().hex, str(uuid.uuid4())
    writer = PipeWriter(reader.stdin)
    meta = {"mime_type": "video/mp4", "filename": "talking-head.mp4"}
    started = time.perf_counter()
    pieces = [blob[i:i + CHUNK] for i in range(0, len(blob), CHUNK)] + [b""]
    for sequence, piece in enumerate(pieces):
        message = ToolInvokeMessage(
            type=ToolInvokeMessage.MessageType.BLOB_CHUNK, meta=meta,
            message=ToolInvokeMessage.BlobChunkMessage(id=blob_id, sequence=sequence, total_length=size,
                                                       blob=piece, end=not piece))
        writer.session_message(session_id=session_id, data=writer.stream_object(data=message))
    reader.stdin.close()
    received = int(reader.stdout.read())
    reader.wait()
    return time.perf_counter() - started, received


def main() -> None:
    results = []
    for size_mib in SIZES_MIB:
        seconds, received = hand_over(size_mib * MIB)
        assert received == size_mib * MIB, received
        results.append({"size_mib": size_mib, "chunks": -(-size_mib * MIB // CHUNK), "seconds": round(seconds, 2),
                        "mib_per_s": round(size_mib / seconds, 1)})
        print(f"{size_mib:>3} MiB: {seconds:6.2f} s ({size_mib / seconds:.1f} MiB/s)", file=sys.stderr)
    print(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
