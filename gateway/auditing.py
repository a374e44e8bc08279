"""Refusals go into the audit trail: the evidence a team needs in a dispute is that the
server said no, when, to whom and why. (Creations, appends, terminations and
completions are written by the buffer scripts themselves, in the same step.)

A refusal changes nothing, so its record does not hold up its answer: refusals are
answered at once and written in batches, one pipelined round trip for everything
refused since the last one. Under a refusal storm that is what keeps the answer
fast (no Redis round trip behind the busy appends) and Redis's load flat. The price:
a gateway killed with SIGKILL loses the records of the refusals of its last few
milliseconds; a stopping gateway writes them first.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis
from aiohttp import web

from buffer import keys
from buffer.store import UploadStore
from gateway.context import PRINCIPAL, TENANT

log = logging.getLogger("unggah.audit")

# Records kept while Redis is unreachable; beyond this the oldest are dropped (and counted
# in the log), so a long outage cannot grow the gateway's memory without bound.
BACKLOG = 50_000


class RefusalLog:
    """Refusal records waiting for their batch; one writer task at a time."""

    def __init__(self, store: UploadStore) -> None:
        self.store = store
        self.pending: list[tuple[int, dict[str, str]]] = []
        self.dropped = 0
        self._writer: asyncio.Task | None = None

    def record(self, partition: int, fields: dict[str, object]) -> None:
        self.pending.append((partition, self.store.audit_fields("refused", fields)))
        if len(self.pending) > BACKLOG:
            excess = len(self.pending) - BACKLOG
            del self.pending[:excess]
            self.dropped += excess
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        await asyncio.sleep(0)  # let this loop turn's other refusals join the batch
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                await self.store.audit_many(batch)
            except (redis.RedisError, OSError) as e:
                # Keep them for the next refusal's batch (or the flush at shutdown).
                self.pending[:0] = batch
                log.warning("could not audit refusals yet", extra={"error": str(e), "pending": len(self.pending)})
                return
        if self.dropped:
            log.error("refusal records dropped while redis was unreachable", extra={"dropped": self.dropped})
            self.dropped = 0

    async def flush(self) -> None:
        """Write what is pending (on shutdown, before the connection pool closes)."""
        if self._writer is not None:
            await asyncio.wait({self._writer}, timeout=5)
        if self.pending:
            self._writer = None
            await asyncio.wait_for(self._write(), 5)


# Upload ids are "<partition>-<32 hex>"; this leaves room for any future form.
ID_CHARS = 128


def middleware(store: UploadStore, refusals: RefusalLog):
    @web.middleware
    async def audit_refusals(request: web.Request, handler):
        response = await handler(request)
        if response.status >= 400 and request.path.startswith("/files"):
            upload_id = request.match_info.get("upload_id", "")
            p = store.partition(upload_id)
            tenant = request.get(TENANT, "")
            if p is None:
                p = keys.partition_for_key(tenant or "-", "refusals", store.partitions)
            principal = request.get(PRINCIPAL)
            actor = f"{principal.tenant}/{principal.name}" if principal is not None else "unauthenticated"
            # The id as the client sent it, cut to what an id can be: anyone may send 8 KB of path,
            # and the trail keeps every record for good.
            refusals.record(p, dict(u=upload_id[:ID_CHARS], t=tenant, a=actor, method=request.method,
                                    status=response.status, reason=response.headers.get("Unggah-Reason", "")))
        return response

    return audit_refusals
