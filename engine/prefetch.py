"""Overlap the stages of a render: decoding, drawing and encoding run at the same time.

Pipe reads and writes and most numpy/OpenCV work release the GIL, so a bounded hand-off between
threads keeps both cores busy without holding more than a few frames in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(source: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead of the consumer.

    Exceptions in the source are re-raised in the consumer; if the consumer stops early the
    background thread is told to stop and the source is closed.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            items.put(_DONE)
        except BaseException as exc:
            items.put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=run, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(0.05)
