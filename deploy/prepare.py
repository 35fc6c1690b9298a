"""Prepare a storage root once, before the API and workers start: ``python prepare.py``.

- Creates the job tables. The API and every worker also create missing tables at start, but several processes doing
  so at the same moment on PostgreSQL can collide; doing it first, alone, avoids that.
- Builds the sample avatars into ENGINE_STORAGE_ROOT. ``astronaut`` is the default ``avatar_id`` of every job, so
  without it a job that names no avatar fails.

Idempotent and quick when nothing is missing; compose runs it as the one-shot ``bridge-init`` service.
"""

from __future__ import annotations

import sys

from bridge.db import Database
from bridge.settings import BridgeSettings
from engine.samples import ensure_samples
from engine.settings import EngineSettings


def main() -> int:
    settings = BridgeSettings()
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    database = Database(settings.database)
    try:
        database.create_all()
    finally:
        database.dispose()
    print(f"job tables ready ({database.engine.dialect.name})")
    for avatar in ensure_samples(EngineSettings()):
        print(f"sample avatar ready: {avatar.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
