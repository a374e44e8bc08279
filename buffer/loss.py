"""Reporting acknowledged state the buffer came back without: the one step both witnesses share.

Two witnesses look for such a loss (appendfsync everysec, or an external Redis without
WAITAOF): each gateway, from what it acknowledged in the last WINDOW seconds
(gateway/witness.py), and the auditor, from the tail of the audit chain on disk
(ingest/audit.py, ChainWitness). Both hand what they saw to `report`, which runs MARK_LOST
(buffer/scripts.py) upload by upload: the upload's status then says what to send again, or
a tombstone says the upload is gone, and an audit record (`ev: loss`) names the witness.
MARK_LOST reports an upload's loss of an acknowledged offset once, whichever witness asks
first; the other, or a second look, hears "nothing new" and reports nothing. What counts
the loss (a metric) is the caller's `on_loss`: each process exposes its own.
"""

from __future__ import annotations

import logging
from typing import Callable

from buffer.store import UploadStore

log = logging.getLogger("unggah.witness")

# Acknowledgements this old were on disk before any crash that a later look at the same server
# could follow: everysec writes within about 2 s (a slow fsync postpones it that long) and fsyncs
# every second.
WINDOW = 10.0
# How long a lost upload's tombstone answers its status.
TOMBSTONE_TTL = 7 * 24 * 3600

# (upload id, tenant, acknowledged offset, offset the buffer has now; -1: the upload is gone)
OnLoss = Callable[[str, str, int, int], None]


async def report(store: UploadStore, acknowledged: dict[str, tuple[int, str]], witness: str,
                 on_loss: OnLoss | None = None, run: str = "") -> int:
    """Ask the buffer about each upload's acknowledged offset ({upload id: (offset, tenant)}) and
    report what it no longer holds and was not reported yet after this restart (`run`, the
    server's run id the witness saw come back); the number of uploads reported."""
    short = 0
    for upload_id, (acked, tenant) in acknowledged.items():
        now = await store.mark_lost(upload_id, acked, tenant, TOMBSTONE_TTL, witness=witness, run=run)
        if now is None:
            continue
        short += 1
        log.error("acknowledged bytes lost with the buffer",
                  extra={"upload": upload_id, "tenant": tenant, "acknowledged": acked, "offset_now": now,
                         "witness": witness})
        if on_loss is not None:
            on_loss(upload_id, tenant, acked, now)
    if short:
        log.error("the buffer came back without acknowledged data", extra={"uploads": short, "witness": witness})
    return short
