"""The gateway as witness of what it acknowledged, so that a loss of the buffer is never silent.

Under `appendfsync always` Valkey writes every append to disk before the gateway answers.
Under `everysec` (or an external Redis without WAITAOF) it may not: while a background fsync
is slow, Valkey postpones its AOF writes for up to 2 s and keeps answering, so a crash in
that moment loses appends, and creations, that clients were told are safe. The restarted
Valkey cannot know what it never wrote. The gateway can: it remembers what it acknowledged
in the last WINDOW seconds, notices the restart (the server's run id changes), and asks the
buffer, upload by upload, whether it still holds that much. Whatever is missing is reported
in the store (MARK_LOST: the upload's status then says what to send again, or a tombstone
says the upload is gone), the audit trail, and through `on_loss` in the log and a metric.

A gateway that crashes with Valkey forgets what it witnessed: then the audit chain on disk,
which holds every acknowledged append the auditor had read, is the only record (see
docs/operations.md). This witness covers the common case, Valkey alone restarting.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from buffer.store import UploadStore
from gateway.background import Every

log = logging.getLogger("unggah.witness")

# Acknowledgements this old were on disk before any crash that a later successful look at
# the same server could follow: everysec writes within about 2 s and fsyncs every second.
WINDOW = 10.0
# How often the server's run id is read.
POLL = 0.5
# How long a lost upload's tombstone answers its status.
TOMBSTONE_TTL = 7 * 24 * 3600


class AckWitness:
    def __init__(self, store: UploadStore, on_loss: Callable[[str, str, int, int], None] | None = None,
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
            await self.check()
        elif self.run_id:
            # The same server answered: what it acknowledged WINDOW ago is on its disk.
            cutoff = self.clock() - WINDOW
            for upload_id in [u for u, (_, _, at) in self.recent.items() if at < cutoff]:
                del self.recent[upload_id]
        self.run_id = run_id

    async def check(self) -> int:
        """Ask the buffer about every upload acknowledged recently; the number found short."""
        short = 0
        for upload_id, (acked, tenant, _) in list(self.recent.items()):
            now = await self.store.mark_lost(upload_id, acked, tenant, TOMBSTONE_TTL)
            if now is None:
                continue
            short += 1
            log.error("acknowledged bytes lost with the buffer",
                      extra={"upload": upload_id, "tenant": tenant, "acknowledged": acked, "offset_now": now})
            if self.on_loss is not None:
                self.on_loss(upload_id, tenant, acked, now)
        self.recent.clear()
        if short:
            log.error("the buffer came back without acknowledged data", extra={"uploads": short})
        return short

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()
