"""Retention: a finished job's files (and S3 objects) are deleted ``retention_s`` after it ended.

The row stays, with ``purged_at`` set, so GET /v1/jobs/{id} still answers and says the files are gone.
Abandoned scratch files of the API (an upload cut off mid-way) are removed after an hour.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from bridge.db import Database, utcnow
from bridge.objectstore import ObjectStore, job_prefix
from bridge.storage import Storage

log = logging.getLogger(__name__)
SCRATCH_MAX_AGE_S = 3600.0


class Retention:
    def __init__(self, db: Database, storage: Storage, store: ObjectStore | None, retention_s: float) -> None:
        self.db = db
        self.storage = storage
        self.store = store
        self.retention_s = retention_s

    def sweep(self) -> list[str]:
        purged = []
        for job in self.db.expired_files(utcnow() - timedelta(seconds=self.retention_s)):
            if self.store is not None:
                self.store.delete_prefix(job_prefix(job.id))
            self.storage.drop_job(job.id)
            self.db.mark_purged(job.id)
            purged.append(job.id)
        if purged:
            log.info("retention deleted the files of %d job(s)", len(purged))
        self._clean_scratch()
        return purged

    def _clean_scratch(self) -> None:
        scratch = self.storage.root / "tmp"
        if not scratch.is_dir():
            return
        cutoff = time.time() - SCRATCH_MAX_AGE_S
        for path in scratch.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue
