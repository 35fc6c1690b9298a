"""The ``neural`` extra: torch and face-alignment, needed by the Wav2Lip renderer and the face_alignment backend only.

The default install leaves the extra out because the weightless default path (procedural renderer, dlib landmarks)
never uses it, and torch from the public index is the CUDA build, about 6 GB with its NVIDIA wheels. The two paths
that need it call :func:`require` before importing their modules, so a server without the extra answers with what
to install instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib

from .errors import BackendUnavailable

EXTRA = "neural"
INSTALL_HINT = (
    "pip install 'talking-head-server[neural]' (install torch==2.13.0 from PyTorch's CPU or CUDA index first, "
    "or pip brings the CUDA build from PyPI)"
)


def require(feature: str, modules: tuple[str, ...], *, field: str) -> None:
    """Import ``modules`` or raise ``BackendUnavailable`` naming ``feature`` and the install command.

    Only the absence of one of ``modules`` itself is translated: a missing dependency *inside* an installed
    package is a broken install, whose own error says more than a hint to install the extra again.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] != name:
                raise
            raise BackendUnavailable(
                f"{feature} needs the {EXTRA} extra ({name} is not installed): {INSTALL_HINT}", field=field
            ) from None
