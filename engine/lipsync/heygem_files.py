"""Handing files to HeyGem through its shared ``face2face/temp`` folder, and reading its result back.

HeyGem's own client sends bare file names and the service resolves them in ``/code/data/temp``; some
images accept only in-container paths, so the style is a setting. Speech is handed over at the rate
HeyGem's own TTS produces, because newer images reject other rates in their duration check. The
folder is checked before anything is written: Docker creates it as root, and a raw ``PermissionError``
from deep inside a job tells an admin nothing about which folder to fix or how.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import BackendFailed, BackendUnavailable
from ..settings import EngineSettings

log = logging.getLogger(__name__)

RESULT_VISIBLE_POLL_S = 0.1


def result_name(code: str) -> str:
    return f"{code}-r.mp4"


@dataclass(frozen=True)
class SharedFolder:
    """``path``: the host path of ``face2face/temp``; ``face2face`` is its parent."""

    path: Path
    path_style: str = "bare"
    container_dir: str = "/code/data/temp"

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> SharedFolder:
        if settings.heygem_data_dir is None:
            raise BackendUnavailable(
                "the heygem renderer needs ENGINE_HEYGEM_DATA_DIR (the host path of HeyGem's face2face/temp)")
        return cls(Path(settings.heygem_data_dir), settings.heygem_path_style, settings.heygem_container_dir)

    @property
    def result_dir(self) -> Path:
        return self.path.parent / "result"

    def problem(self) -> str | None:
        """What an admin must change before HeyGem and we can share the folder; None when nothing."""
        if not self.path.is_dir():
            return (f"ENGINE_HEYGEM_DATA_DIR {self.path} is not a directory: point it at HeyGem's face2face/temp "
                    "(the host side of the /code/data volume, plus /temp) as mounted in this container")
        who = f"uid {os.getuid()}, gid {os.getgid()}"
        try:
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".talking-head-probe-"):
                pass
        except OSError as exc:
            return (f"{self.path} is not writable by this worker ({who}; {type(exc).__name__}). Docker creates "
                    f"HeyGem's folders as root: on the host run `sudo chown -R {os.getuid()}:{os.getgid()} "
                    f"{self.path.parent}` (or `sudo chmod -R a+rwX {self.path.parent}`)")
        if not self.result_dir.is_dir():
            return (f"{self.result_dir} does not exist, and HeyGem fails without it: on the host run "
                    f"`mkdir -p {self.result_dir}` as the owner of {self.path.parent}")
        return None

    def check(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise BackendUnavailable(problem)

    def reference(self, name: str) -> str:
        """How HeyGem is told about a file we placed in the folder."""
        if self.path_style == "container":
            return f"{self.container_dir.rstrip('/')}/{name}"
        return name

    def place_copy(self, src: Path, name: str) -> Path:
        dst = self.path / name
        tmp = dst.with_name(f".{name}.partial")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst

    def place_speech(self, src: Path, name: str, rate: int) -> Path:
        """The speech as 16-bit mono WAV at ``rate``, written under a hidden name and then renamed."""
        with wave.open(str(src), "rb") as wav:
            channels, width, src_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
        if (channels, width, src_rate) == (1, 2, rate):
            return self.place_copy(src, name)
        import numpy as np

        pcm = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
        mono = pcm.reshape(-1, channels).mean(axis=1)
        # Imported here: /readyz imports this module for the folder check, and engine.audio brings
        # scipy.signal (about 1 s) into the API for nothing.
        from ..audio import resample

        samples = resample(mono, src_rate, rate)
        dst = self.path / name
        tmp = dst.with_name(f".{name}.partial")
        try:
            with wave.open(str(tmp), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(rate)
                out.writeframes((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst

    def locate_result(self, code: str, result: str, wait_s: float) -> Path:
        """The result file; refuses anything but ``<code>-r.mp4`` in this folder.

        HeyGem reports ``/<code>-r.mp4`` relative to the data folder (older builds a container path);
        only the base name is trusted. On NFS or SMB a file written by another host can stay invisible
        for a moment after the status says done, so a missing file is looked for again for ``wait_s``.
        """
        expected = result_name(code)
        name = PureWindowsPath(PurePosixPath(result).name).name if result else expected
        if name != expected:
            raise BackendFailed(f"HeyGem reported an unexpected result {result!r}; expected {expected}")
        root = self.path.resolve()
        give_up = time.monotonic() + wait_s
        waited = False
        while True:
            path = (root / name).resolve()
            if not path.is_relative_to(root) or path.parent != root:
                raise BackendFailed(f"HeyGem's result {name} resolves outside ENGINE_HEYGEM_DATA_DIR")
            if path.is_file():
                return path
            if time.monotonic() >= give_up:
                raise BackendFailed(
                    f"HeyGem reported success but {name} did not appear in {self.path} within {wait_s:g} s; on a "
                    "network share raise ENGINE_HEYGEM_RESULT_WAIT_S or shorten the client's attribute cache "
                    "(NFS actimeo)")
            if not waited:
                log.info("waiting for HeyGem's result %s to become visible", name)
                waited = True
            _refresh_listing(self.path)
            time.sleep(min(RESULT_VISIBLE_POLL_S, max(give_up - time.monotonic(), 0.0)))


def _refresh_listing(path: Path) -> None:
    """Listing the folder makes NFS clients revalidate its cached entries."""
    try:
        os.listdir(path)
    except OSError:
        return
