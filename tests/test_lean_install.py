"""The lean default install: torch and face-alignment are the ``neural`` extra, and only its two users load them.

The default path (procedural renderer, dlib landmarks) renders in a subprocess where both packages cannot be
imported at all; choosing wav2lip or face_alignment without them is a ``backend_unavailable`` error that says what
to install, not a traceback. The dependency split itself is read from pyproject.toml and the Makefile.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from engine import Engine, EngineSettings
from engine.errors import BackendUnavailable
from engine.face import get_backend
from engine.neural import INSTALL_HINT
from tests.conftest import REPO

NEURAL = ("torch", "face_alignment")

BLOCKER = r"""
import importlib.abc, sys

BLOCKED = frozenset(("torch", "face_alignment"))
attempts = []

class NotInstalled(importlib.abc.MetaPathFinder):  # refuses them as a server without the extra does; notes each try
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the neural extra)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""
"""Installed first in a subprocess (as code, or as its sitecustomize): the neural extra's packages cannot load."""

DEFAULT_PATH_PROBE = BLOCKER + r"""
import json
from pathlib import Path

import cv2
from skimage import data

from bridge.settings import BridgeSettings
from bridge.tasks import JobRunner, make_celery
from engine import Engine, EngineSettings
from engine.render import RenderRequest

work = Path(sys.argv[1])
photo = work / "face.png"
cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
settings = EngineSettings(_env_file=None, storage_root=work / "store")
result = Engine(settings).render(RenderRequest(avatar=str(photo), out=work / "out.mp4", text="Hi there."))

import bridge.app, bridge.cli  # noqa: E401,F401  the API and the worker command, as `python -m bridge` loads them

bridge_settings = BridgeSettings(_env_file=None, storage_root=work / "bridge", min_free_bytes=0,
                                 database_url=f"sqlite:///{work / 'bridge.db'}")
make_celery(bridge_settings)
JobRunner(bridge_settings).warm_up()  # what each worker child runs first: loads the configured renderer
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps({"renderer": result.renderer, "face_backend": settings.face_backend, "frames": result.n_frames,
                  "attempts": attempts, "loaded": loaded}))
"""


@pytest.mark.slow
def test_default_render_and_worker_start_never_import_torch(tmp_path: Path) -> None:
    """A procedural render from a new photo avatar (dlib tracks it), the bridge's API and worker modules, and a
    worker child's warm-up, with torch and face_alignment unimportable: all work, and neither was even tried."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_"))}
    probe = subprocess.run([sys.executable, "-c", DEFAULT_PATH_PROBE, str(tmp_path)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-4000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["renderer"] == "procedural" and result["face_backend"] == "dlib" and result["frames"] > 0
    assert result["attempts"] == [] and result["loaded"] == []


class _NotInstalled(importlib.abc.MetaPathFinder):
    """In this process: ``modules`` cannot be imported, as on a server without the extra."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.modules:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Unload ``modules`` (and the engine modules holding them) for this test, and refuse to load them again.

    A blocking finder rather than ``None`` in sys.modules: scipy looks torch up in sys.modules by name.
    """
    held = [*modules, "engine.lipsync.wav2lip", "engine.lipsync.wav2lip_model", "engine.face.fa_backend"]
    for name in list(sys.modules):
        if name in held or name.partition(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(modules), *sys.meta_path])


def _says_what_to_install(err: BackendUnavailable, feature: str, missing: str) -> None:
    message = str(err)
    assert err.code == "backend_unavailable"
    assert feature in message and f"{missing} is not installed" in message and INSTALL_HINT in message
    assert "pip install 'talking-head-server[neural]'" in message


def test_wav2lip_without_torch_says_to_install_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, *NEURAL)
    checkpoint = tmp_path / "wav2lip.pth"
    checkpoint.write_bytes(b"")
    engine = Engine(EngineSettings(_env_file=None, storage_root=tmp_path, wav2lip_checkpoint=checkpoint))
    with pytest.raises(BackendUnavailable) as err:
        engine.renderer("wav2lip")
    _says_what_to_install(err.value, "the wav2lip renderer", "torch")
    assert err.value.field == "renderer"
    assert engine.renderer("procedural").name == "procedural"


@pytest.mark.parametrize("missing", NEURAL)
def test_face_alignment_without_the_extra_says_to_install_it(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if missing != "torch":  # face-alignment alone missing: only where torch is there (make setup's environment)
        pytest.importorskip("torch")
    _without(monkeypatch, missing)
    with pytest.raises(BackendUnavailable) as err:
        get_backend(EngineSettings(_env_file=None, face_backend="face_alignment", device="cpu"))
    _says_what_to_install(err.value, "the face_alignment face backend", missing)
    assert err.value.field == "face_backend"
    assert get_backend(EngineSettings(_env_file=None)).name == "dlib"


def test_cli_without_torch_prints_the_hint_not_a_traceback(tmp_path: Path) -> None:
    """`python -m engine render --renderer wav2lip` on a server without the extra: exit 2 and one clear line."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(BLOCKER)
    checkpoint = tmp_path / "wav2lip.pth"
    checkpoint.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "ENGINE_"))}
    env |= {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "ENGINE_STORAGE_ROOT": str(tmp_path / "s"),
            "ENGINE_WAV2LIP_CHECKPOINT": str(checkpoint)}
    run = subprocess.run([sys.executable, "-m", "engine", "render", "--renderer", "wav2lip", "--text", "Hi.",
                          "--avatar", "astronaut-photo", "--out", str(tmp_path / "o.mp4"), "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and INSTALL_HINT in run.stderr
    error = json.loads(run.stdout.strip().splitlines()[-1])["error"]
    assert error["code"] == "backend_unavailable" and error["field"] == "renderer"


def _names(requirements: list[str]) -> dict[str, str]:
    return {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier) for r in requirements}


def test_torch_is_in_the_neural_extra_only() -> None:
    """Core dependencies leave torch and face-alignment out; the extra pins them; `make setup` (tests) installs it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    neural = _names(project["optional-dependencies"]["neural"])
    assert neural == {"torch": "==2.13.0", "face-alignment": "==1.5.0"}
    assert not set(neural) & set(core)
    for name, extra in project["optional-dependencies"].items():
        assert name == "neural" or not set(neural) & set(_names(extra)), f"the {name} extra pulls the neural one"
    install = re.search(r"pip install -q -e '\.\[([a-z,]+)\]'", (REPO / "Makefile").read_text())
    assert install is not None and "neural" in install.group(1).split(",")
