"""The gateway as witness of what it acknowledged, so that a loss of the buffer is never silent.

Under `appendfsync always` Valkey writes every append to disk before the gateway answers.
Under `everysec` (or an external Redis without WAITAOF) it may not: while a background fsync
is slow, Valkey postpones its AOF writes for up to 2 s and keeps answering, so a crash in
that moment loses appends, and creations, that clients were told are safe. The restarted
Valkey cannot know what it never wrote. The gateway can: it remembers what it acknowledged
in the last WINDOW seconds, notices the restart (the server's run id changes), and asks the
buffer, upload by upload, whether it still holds that much. Whatever is missing is reported
in the store (MARK_LOST: the upload's status then says what to send again, or a tombstone
says the upload is gone), the audit trail, and through `on_loss` in the log and a metric
(buffer/loss.py, the step both witnesses share).

A gateway that crashes with Valkey forgets what it witnessed: then the auditor is the
witness, from the tail of the audit chain on disk (ingest/audit.py, ChainWitness; what that
can and cannot see is said there). This witness covers the common case, Valkey alone
restarting; a loss both see is reported once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from buffer import loss
from buffer.loss import WINDOW, OnLoss
from buffer.store import UploadStore
from gateway.background import Every

log = logging.getLogger("unggah.witness")

# How often the server's run id is read.
POLL = 0.5


class AckWitness:
    def __init__(self, store: UploadStore, on_loss: OnLoss | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        # Called per upload found short: (upload id, tenant, acknowledged offset, offset now; -1: gone).
        self.on_loss = on_loss
        self.clock = clock
        self.recent: dict[str, tuple[int, str, float]] = {}  # upload id -> (offset acked, tenant, when)
        self.run_id = ""
        # The buffer down: the look fails and is tried again; what was acked stays remembered.
        self._every = Every(POLL, self.look, "witness")

    def acked(self, upload_id: str, offset: int, tenant: str) -> None:
        """The gateway has told a client that `upload_id` holds `offset` bytes."""
        self.recent[upload_id] = (offset, tenant, self.clock())

    async def look(self) -> None:
        """One look at the server: a new run id means it restarted, so check what it may have lost."""
        run_id = await self.store.server_id()
        if self.run_id and run_id != self.run_id:
            log.warning("the buffer restarted: checking what it had acknowledged",
                        extra={"uploads": len(self.recent)})
            await self.check(run_id)
        elif self.run_id:
            # The same server answered: what it acknowledged WINDOW ago is on its disk.
            cutoff = self.clock() - WINDOW
            for upload_id in [u for u, (_, _, at) in self.recent.items() if at < cutoff]:
                del self.recent[upload_id]
        self.run_id = run_id

    async def check(self, run: str = "") -> int:
        """Ask the buffer (come back as server run `run`) about every upload acknowledged
        recently; the number found short."""
        short = await loss.report(self.store, {u: (acked, tenant) for u, (acked, tenant, _) in self.recent.items()},
                                  "gateway-witness", self.on_loss, run)
        self.recent.clear()
        return short

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()
