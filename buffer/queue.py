"""The ingesters' side of the buffer: read, reclaim, acknowledge, finish, dead-letter.

At-least-once: an entry leaves its stream only in ACK, FINISH, DEAD or PARK, each
of which acknowledges and deletes it in the same step that updates the
counters. A consumer that dies keeps its entries pending under its name until
it comes back (stable names) or another consumer reclaims them (XAUTOCLAIM).
"""

from __future__ import annotations

import msgspec
import redis.asyncio as redis

from buffer import keys
from buffer.connection import ensure_groups
from buffer.messages import DATA, DeadLetter, Entry, UploadState, from_fields, held
from buffer.scripts import Scripts
from buffer.store import now_ms

# Not an upload state: how `states` reports an upload failed by a dead letter.
HELD = "held"


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes] | None) -> tuple[Entry, bytes] | None:
    """An entry and its data; None for an entry that was deleted while pending."""
    if not fields:
        return None
    data = fields.get(b"d", b"")
    e = Entry(entry_id=entry_id.decode(), k=fields[b"k"].decode(), u=fields[b"u"].decode(),
              o=int(fields.get(b"o", 0)), c=int(fields.get(b"c", 0)), n=len(data))
    return e, data


class Queue:
    def __init__(self, client: redis.Redis, partitions: int, group: str = keys.GROUP) -> None:
        self.r = client
        self.partitions = partitions
        self.group = group
        self.scripts = Scripts(client)
        self._cursor = ["0-0"] * partitions

    async def ensure_groups(self) -> None:
        await ensure_groups(self.r, [keys.stream(p) for p in range(self.partitions)], self.group)

    async def read(self, p: int, consumer: str, count: int, block_ms: int, *, own_pending: bool = False):
        """New entries (or, after a restart, this consumer's own pending ones)."""
        res = await self.r.xreadgroup(self.group, consumer, {keys.stream(p): "0" if own_pending else ">"},
                                      count=count, block=None if own_pending else block_ms)
        return res[0][1] if res else []

    async def reclaim(self, p: int, consumer: str, min_idle_ms: int, count: int):
        """Entries other consumers left idle too long, now ours (XAUTOCLAIM walks the PEL)."""
        nxt, claimed, _deleted = await self.r.xautoclaim(keys.stream(p), self.group, consumer, min_idle_ms,
                                                         start_id=self._cursor[p], count=count)
        self._cursor[p] = nxt.decode() if isinstance(nxt, bytes) else nxt
        return claimed

    async def deliveries(self, p: int, entry_id: str) -> int:
        rows = await self.r.xpending_range(keys.stream(p), self.group, min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 0

    async def keep_alive(self, p: int, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries we are still working on, so nobody reclaims them midway.
        JUSTID leaves the delivery count alone."""
        if entry_ids:
            await self.r.xclaim(keys.stream(p), self.group, consumer, 0, entry_ids, justid=True)

    async def ack(self, p: int, done: list[Entry]) -> int:
        if not done:
            return 0
        ks = [keys.stream(p), keys.buffered_bytes(p)] + [keys.upload(p, e.u) for e in done]
        args: list[object] = [self.group]
        for e in done:
            args += [e.entry_id, e.n if e.k == DATA else 0, e.u]
        n = await self.scripts.ack(keys=ks, args=args)
        await self.r.hdel(keys.errors(p), *[e.entry_id for e in done])
        return n

    async def finish(self, p: int, e: Entry, outcome: str, sha256: str = "", reason: str = "") -> bool:
        res = await self.scripts.finish(
            keys=[keys.stream(p), keys.upload(p, e.u), keys.completed(p), keys.records(p, e.u), keys.audit(p)],
            args=[self.group, e.entry_id, outcome, sha256, reason, now_ms()])
        await self.r.hdel(keys.errors(p), e.entry_id)
        return bool(res)

    async def note_error(self, p: int, entry_id: str, error: str) -> None:
        await self.r.hset(keys.errors(p), entry_id, error[:500])

    async def dead_letter(self, p: int, e: Entry, deliveries: int) -> None:
        last = await self.r.hget(keys.errors(p), e.entry_id)
        reason = (last.decode() if last else "no success") + f" (after {deliveries} deliveries)"
        await self.scripts.dead(keys=[keys.stream(p), keys.dead(p), keys.upload(p, e.u), keys.buffered_bytes(p)],
                                args=[self.group, e.entry_id, reason, deliveries, now_ms()])
        await self.r.hdel(keys.errors(p), e.entry_id)

    async def park(self, p: int, e: Entry) -> bool:
        """Keep an entry of a held upload with its dead letter (False: no longer held)."""
        reason = "kept for replay: its upload was held by a dead letter"
        res = await self.scripts.park(keys=[keys.stream(p), keys.dead(p), keys.upload(p, e.u), keys.buffered_bytes(p)],
                                      args=[self.group, e.entry_id, reason, await self.deliveries(p, e.entry_id), now_ms()])
        await self.r.hdel(keys.errors(p), e.entry_id)
        return bool(res)

    async def dead_letters(self, p: int) -> list[tuple[str, DeadLetter]]:
        out = []
        for entry_id, fields in await self.r.xrange(keys.dead(p)):
            f = {k.decode(): v for k, v in fields.items() if k != b"d"}
            out.append((entry_id.decode(), msgspec.convert({k: v.decode() for k, v in f.items()}, DeadLetter,
                                                           strict=False)))
        return out

    async def replay(self, p: int, dead_id: str, upload_id: str) -> bool:
        return bool(await self.scripts.replay(
            keys=[keys.stream(p), keys.dead(p), keys.upload(p, upload_id), keys.buffered_bytes(p)], args=[dead_id]))

    async def upload(self, upload_id: str) -> UploadState | None:
        p = keys.partition_of(upload_id, self.partitions)
        raw = await self.r.hgetall(keys.upload(p, upload_id)) if p is not None else None
        return from_fields(raw, UploadState) if raw else None

    async def states(self, p: int, upload_ids: list[str]) -> dict[str, str]:
        """Each upload's state, with HELD for one failed by a dead letter (see PARK)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for u in upload_ids:
                pipe.hmget(keys.upload(p, u), "state", "reason")
            vals = await pipe.execute()
        out = {}
        for u, (state, reason) in zip(upload_ids, vals):
            state, reason = (state or b"").decode(), (reason or b"").decode()
            out[u] = HELD if held(state, reason) else state
        return out

    async def backlog(self, p: int) -> tuple[int, int]:
        """(entries in the stream, entries pending in the group): XLEN is exact with delete-on-ack."""
        length = await self.r.xlen(keys.stream(p))
        try:
            summary = await self.r.xpending(keys.stream(p), self.group)
            pending = int(summary["pending"])
        except redis.ResponseError:
            pending = 0
        return length, pending
