"""The ingester's metrics: the observer ingest/worker.py calls at each step.

The Ingester owns one `IngestMetrics` (pass another to `Ingester(observer=...)`, as a test
may) and calls it where things happen: an acknowledgement, a finish, a dead letter, an
entry error, a batch. Nothing is wrapped: the calls are in the worker's code, where a
reader sees them.

Each ingester process serves its own registry on its own port (`unggah ingest
--metrics-port P`, metrics/server.py); `unggah up` hands each one a free port and prints
them. Buffer-level gauges (backlog, pending, dead letters) come from the gateway, not from
here, so N ingesters never report the same stream N times.
"""

from __future__ import annotations

import enum

from buffer.messages import DATA, FAILED, STORED, Entry
from metrics.registry import (INGEST_BATCH_DURATION, INGEST_BYTES, INGEST_DEAD_LETTERS, INGEST_ENTRIES,
                              INGEST_ERRORS, INGEST_REDELIVERIES, UPLOADS_FAILED, UPLOADS_STORED)

KINDS = {"d": "data", "f": "fin", "c": "concat", "x": "drop"}


class EntryErrorKind(enum.StrEnum):
    """Why an entry could not be processed this time (it stays pending): the error label."""

    CORRUPT = "corrupt-entry"  # its crc32c does not match its bytes
    WRITE_FAILED = "write-failed"  # the blob store refused the write
    FAILED = "entry-failed"  # anything else, retried and in the end dead-lettered


class FailureKind(enum.StrEnum):
    """Why an upload failed for good: the `reason` label of unggah_uploads_failed_total."""

    SHA256_MISMATCH = "sha256-mismatch"  # the stored bytes are not the ones the client declared
    DEAD_LETTER = "dead-letter"  # one of its entries was dead-lettered
    OTHER = "other"  # e.g. a partial of its concatenation failed


class IngestMetrics:
    """Counts what an Ingester does into the ingest registry."""

    def acked(self, done: list[Entry], first_acks: int) -> None:
        """`done` were acknowledged; `first_acks` of them for the first time (ACK's return)."""
        if not done:
            return
        kinds: dict[str, int] = {}
        for e in done:
            k = KINDS.get(e.k, "other")
            kinds[k] = kinds.get(k, 0) + 1
        for k, c in kinds.items():
            INGEST_ENTRIES.labels(k).inc(c)
        nbytes = sum(e.n for e in done if e.k == DATA)
        # A redelivered entry already acknowledged elsewhere drains nothing: count first acks only.
        INGEST_BYTES.inc(nbytes if first_acks >= len(done) else nbytes * first_acks // len(done))

    def finished(self, e: Entry, outcome: str, changed: bool, failure: FailureKind | None) -> None:
        """FINISH ran for `e`; `changed`: it settled the upload (not a repeat)."""
        INGEST_ENTRIES.labels(KINDS.get(e.k, "other")).inc()
        if changed and outcome == STORED:
            UPLOADS_STORED.inc()
        elif changed and outcome == FAILED:
            UPLOADS_FAILED.labels(failure or FailureKind.OTHER).inc()

    def dead_lettered(self, failed_upload: bool) -> None:
        """An entry was dead-lettered; `failed_upload`: its upload was receiving, and failed with it."""
        INGEST_DEAD_LETTERS.inc()
        if failed_upload:
            UPLOADS_FAILED.labels(FailureKind.DEAD_LETTER).inc()

    def entry_error(self, kind: EntryErrorKind) -> None:
        INGEST_ERRORS.labels(kind).inc()

    def batch(self, seconds: float) -> None:
        INGEST_BATCH_DURATION.observe(seconds)

    def redelivered(self, n: int) -> None:
        """Entries processed again (reclaimed, or our own pending after a restart)."""
        if n:
            INGEST_REDELIVERIES.inc(n)
