"""``python -m tests.standins.crashing_worker worker``: a real bridge worker with a poison pill.

Rendering a text that contains ``CRASH`` kills the rendering process with SIGKILL, the way a segfault
in a native library or the kernel's OOM killer would. Every other job renders normally.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from bridge import cli, tasks

_render = tasks.JobRunner._render


def _render_or_die(self: tasks.JobRunner, db: Any, engine: Any, job: Any, *args: Any) -> Any:
    if "CRASH" in str(job.inputs.get("text", "")):
        os.kill(os.getpid(), signal.SIGKILL)
    return _render(self, db, engine, job, *args)


tasks.JobRunner._render = _render_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
