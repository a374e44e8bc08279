"""Buffer-level gauges, read from Redis when /metrics is scraped.

The scrape handler awaits `BufferSnapshot.refresh()` (one pipelined round trip,
at most once per `max_age` seconds however many scrapers ask), then the
registry renders; the collector itself only reads the cached snapshot, so
rendering never blocks the event loop on Redis.

What is read, per partition: XLEN of the stream (exact: entries are deleted
on acknowledgement), the XPENDING summary (count and oldest pending id), GET
of the byte counter, XLEN of the dead-letter stream, XLEN of the audit stream
(the auditor deletes what it chained); once: INFO memory.
Never XINFO STREAM: it returns entry payloads, which are MiBs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

import msgspec
import redis.asyncio as redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from buffer import keys
from metrics.registry import buffer_budget

log = logging.getLogger("unggah.metrics")


class Snapshot(msgspec.Struct):
    taken_at: float = 0.0  # time.time()
    ok: bool = False
    duration: float = 0.0
    backlog: list[int] = []
    pending: list[int] = []
    oldest_pending_ms: list[int] = []  # entry-id timestamp of the oldest pending entry, 0 if none
    buffered: list[int] = []
    dead: list[int] = []
    audit: list[int] = []
    memory_used: int = 0
    memory_max: int = 0


def _id_ms(entry_id) -> int:
    if not entry_id:
        return 0
    s = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(s.split("-", 1)[0])


class BufferSnapshot:
    def __init__(self, client: redis.Redis, partitions: int, *, budget: int = 0, max_age: float = 1.0,
                 timeout: float = 2.0, group: str = keys.GROUP) -> None:
        self.r = client
        self.partitions = partitions
        self.budget = budget  # settings.buffer_budget; metrics.set_buffer_budget overrides it
        self.max_age = max_age
        self.timeout = timeout
        self.group = group
        self.current = Snapshot()
        self._lock = asyncio.Lock()

    async def refresh(self) -> Snapshot:
        async with self._lock:  # concurrent scrapes share one round trip
            if time.time() - self.current.taken_at < self.max_age:
                return self.current
            start = time.perf_counter()
            try:
                snap = await asyncio.wait_for(self._read(), self.timeout)
            except Exception as e:  # noqa: BLE001 - /metrics must still answer, with unggah_redis_up 0
                log.warning("buffer metrics unavailable", extra={"error": repr(e)})
                snap = Snapshot(ok=False)
            snap.taken_at = time.time()
            snap.duration = time.perf_counter() - start
            self.current = snap
            return snap

    async def _read(self) -> Snapshot:
        n = self.partitions
        async with self.r.pipeline(transaction=False) as pipe:
            for p in range(n):
                pipe.xlen(keys.stream(p))
                pipe.xpending(keys.stream(p), self.group)  # summary: count, min id, max id, consumers
                pipe.get(keys.buffered_bytes(p))
                pipe.xlen(keys.dead(p))
                pipe.xlen(keys.audit(p))
            pipe.info("memory")
            res = await pipe.execute(raise_on_error=False)
        snap = Snapshot(ok=True)
        for p in range(n):
            xlen, xpending, nbytes, dead, audit = res[5 * p: 5 * p + 5]
            snap.backlog.append(int(xlen) if not isinstance(xlen, Exception) else 0)
            if isinstance(xpending, Exception):  # NOGROUP: no ingester has created the group yet
                snap.pending.append(0)
                snap.oldest_pending_ms.append(0)
            else:
                count = int(xpending["pending"])
                snap.pending.append(count)
                snap.oldest_pending_ms.append(_id_ms(xpending["min"]) if count else 0)
            snap.buffered.append(int(nbytes or 0) if not isinstance(nbytes, Exception) else 0)
            snap.dead.append(int(dead) if not isinstance(dead, Exception) else 0)
            snap.audit.append(int(audit) if not isinstance(audit, Exception) else 0)
        info = res[-1]
        if isinstance(info, Exception):
            raise info
        snap.memory_used = int(info.get("used_memory", 0))
        snap.memory_max = int(info.get("maxmemory", 0))
        return snap


_DESCRIBE = {
    "unggah_redis_up": "1 if the last read of the buffer's state from Redis succeeded.",
    "unggah_buffer_snapshot_duration_seconds": "How long the last read of the buffer's state took.",
    "unggah_buffer_bytes": "Upload bytes in the buffer, waiting for an ingester, by partition.",
    "unggah_buffer_budget_bytes": "The buffered bytes admission control allows (buffer_budget_bytes).",
    "unggah_ingest_backlog_entries": "Entries in the partition's stream (XLEN; exact, entries are deleted on ack).",
    "unggah_ingest_pending_entries": "Entries delivered to an ingester and not yet acknowledged (XPENDING).",
    "unggah_ingest_oldest_pending_age_seconds": "Age of the oldest pending entry, by partition (0: none pending).",
    "unggah_dead_letter_entries": "Entries in the partition's dead-letter stream (XLEN).",
    "unggah_audit_backlog_entries": "Audit events not yet in the chained files on disk (XLEN of the audit stream).",
    "unggah_redis_memory_used_bytes": "Redis used_memory (INFO memory).",
    "unggah_redis_memory_max_bytes": "Redis maxmemory (0: no limit).",
}


class BufferCollector(Collector):
    """Renders the last snapshot. Absent series (not zeros) when Redis could not be read."""

    def __init__(self, source: BufferSnapshot) -> None:
        self.source = source

    def describe(self) -> Iterable[GaugeMetricFamily]:
        for name in _DESCRIBE:
            yield GaugeMetricFamily(name, _DESCRIBE[name])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self.source.current

        def g(name: str, value: float | None = None) -> GaugeMetricFamily:
            if value is None:
                return GaugeMetricFamily(name, _DESCRIBE[name], labels=["partition"])
            return GaugeMetricFamily(name, _DESCRIBE[name], value=value)

        yield g("unggah_redis_up", 1.0 if s.ok else 0.0)
        yield g("unggah_buffer_snapshot_duration_seconds", s.duration)
        if not s.ok:
            return
        budget = buffer_budget() or self.source.budget
        if budget:
            yield g("unggah_buffer_budget_bytes", budget)
        yield g("unggah_redis_memory_used_bytes", s.memory_used)
        yield g("unggah_redis_memory_max_bytes", s.memory_max)
        now_ms = s.taken_at * 1000
        per = {
            "unggah_buffer_bytes": s.buffered,
            "unggah_ingest_backlog_entries": s.backlog,
            "unggah_ingest_pending_entries": s.pending,
            "unggah_ingest_oldest_pending_age_seconds": [max(now_ms - ms, 0) / 1000 if ms else 0
                                                         for ms in s.oldest_pending_ms],
            "unggah_dead_letter_entries": s.dead,
            "unggah_audit_backlog_entries": s.audit,
        }
        for name, values in per.items():
            fam = g(name)
            for p, v in enumerate(values):
                fam.add_metric([str(p)], v)
            yield fam
