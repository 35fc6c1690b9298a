"""Retention: a finished job's files (and S3 objects) are deleted ``retention_s`` after it ended.

The row stays, with ``purged_at`` set, so GET /v1/jobs/{id} still answers and says the files are gone.
Abandoned scratch files of the API (an upload cut off mid-way) are removed after an hour, and so are job
folders that no row names (an API process that died between moving an upload in and inserting its row):
nothing else would ever delete them.
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
ORPHAN_MIN_AGE_S = 600.0
"""A job folder is made just before its row is inserted; one this old without a row never will have one."""
ORPHAN_SWEEP_EVERY_S = 600.0
"""Listing every job folder is not free on a large NFS share, so orphans are looked for only this often."""


class Retention:
    def __init__(self, db: Database, storage: Storage, store: ObjectStore | None, retention_s: float) -> None:
        self.db = db
        self.storage = storage
        self.store = store
        self.retention_s = retention_s
        self._orphans_checked_at = float("-inf")

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
        if time.monotonic() - self._orphans_checked_at >= ORPHAN_SWEEP_EVERY_S:
            self._orphans_checked_at = time.monotonic()
            self.drop_orphans()
        return purged

    def drop_orphans(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
        """Delete job folders older than ``min_age_s`` that no row names; their ids."""
        cutoff = time.time() - min_age_s
        candidates = []
        for folder in self.storage.job_folders():
            try:
                if folder.stat().st_mtime < cutoff:
                    candidates.append(folder.name)
            except OSError:
                continue
        known = self.db.existing_job_ids(candidates)
        orphans = [job_id for job_id in candidates if job_id not in known]
        for job_id in orphans:
            self.storage.drop_job(job_id)
        if orphans:
            log.warning("deleted %d job folder(s) that no job row names", len(orphans))
        return orphans

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
