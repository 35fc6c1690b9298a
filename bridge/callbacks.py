"""Callbacks: POST the finished job to its ``callback_url``, signed, retried with backoff, never lost.

A job that reaches a final status with a callback URL is marked ``pending`` in the table (in the same
update), so a delivery survives worker and bridge restarts. Each worker's maintenance thread delivers
due callbacks; one delivery attempt is claimed by compare-and-set, so two workers never send the same
attempt. The URL goes through the same SSRF rules as a media download and redirects are not followed.

Signature (the receiver checks it with the API key the job was submitted with)::

    X-Signature-Timestamp: <unix seconds>
    X-Signature: sha256=<hex HMAC-SHA256(key secret, "<timestamp>." + raw body)>
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from datetime import timedelta

from bridge.db import Database, Job, utcnow
from bridge.fetch import FetchError, FetchPolicy, post_json
from bridge.jobview import job_json
from bridge.keys import KeyStore
from bridge.links import LinkMinter

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
MAX_BACKOFF_S = 600.0
HOLD_S = 120.0
"""A claimed delivery is due again this long later if its notifier died mid-way."""


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, db: Database, links: LinkMinter, keys: KeyStore, policy: FetchPolicy, max_attempts: int,
                 backoff_s: float) -> None:
        self.db = db
        self.links = links
        self.keys = keys
        self.policy = policy
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s

    def sweep(self) -> list[str]:
        """Deliver every due callback once; the ids of the jobs whose callback was accepted."""
        delivered = []
        for job in self.db.callbacks_due():
            if self.db.claim_callback(job, HOLD_S) and self._deliver(job):
                delivered.append(job.id)
        return delivered

    def _deliver(self, job: Job) -> bool:
        attempt = (job.callback_attempts or 0) + 1
        secret = self.keys.secret_for(str(job.inputs.get("kid", "")))
        if secret is None or not job.callback_url:
            self.db.callback_done(job.id, "failed")
            log.warning("job %s: callback not sent: the API key it was submitted with is gone", job.id)
            return False
        body = json.dumps(job_json(job, self.links), separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {SIGNATURE_HEADER: signature(secret, timestamp, body), TIMESTAMP_HEADER: str(timestamp),
                   "X-Job-Id": job.id, "X-Delivery-Attempt": str(attempt)}
        try:
            status: int | None = post_json(job.callback_url, body, headers, self.policy, field="callback_url")
            why = f"HTTP {status}"
        except FetchError as err:
            status, why = None, str(err)
        if status is not None and 200 <= status < 300:
            self.db.callback_done(job.id, "delivered")
            log.info("job %s: callback delivered (attempt %d)", job.id, attempt)
            return True
        if attempt >= self.max_attempts:
            self.db.callback_done(job.id, "failed")
            log.warning("job %s: callback failed after %d attempts (%s)", job.id, attempt, why)
            return False
        wait = min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.8, 1.2)
        self.db.callback_done(job.id, "pending", utcnow() + timedelta(seconds=wait))
        log.info("job %s: callback attempt %d failed (%s); next in %.0f s", job.id, attempt, why, wait)
        return False
