"""`unggah ingest`: drain every partition's stream into the blob store.

Per partition, one loop: read a small batch (entries can be MiBs), write the
data entries at their offsets and fsync, then acknowledge them in one atomic
step (ack + delete + byte counters). Finalisation, concatenation and drops
arrive as entries of their own, so a crash in the middle of any of them is
recovered the same way as a crash in the middle of a write: the entry stays
pending and is processed again, by us after a restart or by another ingester
after it has been idle for `ingest_claim_idle_ms`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from contextlib import asynccontextmanager

import crc32c

from buffer import keys
from buffer.connection import UNAVAILABLE, connect, until_available
from buffer.messages import CONCAT, DATA, DROP, FIN, FAILED, RECEIVING, STORED, Entry, decode_metadata, held
from buffer.messages import declared_sha256 as parse_declared_sha256
from buffer.queue import HELD, Queue, parse_entry
from buffer.store import UploadStore
from ingest.observe import EntryErrorKind, FailureKind, IngestMetrics
from metrics.server import MetricsServer
from stores.blobs import BlobStore, blob_store
from unggah.config import Settings

log = logging.getLogger("unggah.ingest")

# What an unreachable buffer raises (builtin TimeoutError is an OSError): logged once per
# outage, without a traceback, and retried; anything else is a bug and keeps its traceback.
CONNECTION_ERRORS = (*UNAVAILABLE, OSError)


def one_line(error: BaseException) -> str:
    """`Type: message` on one line (redis-py's own repr leaves the message out)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Outage:
    """The buffer unreachable, as every loop of one ingester sees it: one warning when it
    starts, one info line when it ends, and no traceback per partition."""

    def __init__(self) -> None:
        # When the current outage was first noticed (monotonic), None while the buffer answers.
        self.lost_since: float | None = None
        self.lost_first: BaseException | None = None  # the error that opened it
        self.lost_failed: set[tuple[str, int]] = set()  # the loops that have failed in it
        self.lost_logged = False

    def lost(self, error: BaseException, loop: str, p: int) -> None:
        """Log an outage once, whichever loop notices it (the others keep retrying, silently).

        It is an outage once one loop has failed twice with nothing getting through in between:
        a single failure that the next command clears is a connection the pool kept idle
        through an earlier restart of the buffer, used for the first time (each such
        connection fails once and is replaced)."""
        now = time.monotonic()
        if self.lost_since is None:
            self.lost_since, self.lost_first, self.lost_failed = now, error, set()
        if (loop, p) in self.lost_failed and not self.lost_logged:
            self.lost_logged = True
            log.warning("buffer unreachable, retrying",
                        extra={"error": one_line(self.lost_first), "loop": loop, "partition": p})
        self.lost_failed.add((loop, p))

    def back(self) -> None:
        """A command got through: the outage, if there was one, is over."""
        if self.lost_since is None:
            return
        down = time.monotonic() - self.lost_since
        if self.lost_logged:
            log.info(f"buffer reachable again after {down:.1f}s", extra={"down_s": round(down, 3)})
        else:
            log.debug("a buffer command failed once and the next got through",
                      extra={"error": one_line(self.lost_first)})
        self.lost_since, self.lost_first, self.lost_failed, self.lost_logged = None, None, set(), False



class EntryError(Exception):
    """This entry cannot be processed now; it stays pending and is retried, then dead-lettered."""


def declared_sha256(metadata: str) -> str | None:
    """The checksum the client declared, as hex (see buffer.messages.declared_sha256).
    "unreadable" for one the gateway let in before it checked at creation: it then never
    matches, and the upload fails with checksum-mismatch rather than being stored unchecked."""
    try:
        return parse_declared_sha256(decode_metadata(metadata))
    except ValueError:
        return "unreadable"


class Ingester:
    def __init__(self, settings: Settings, name: str, client, blobs: BlobStore,
                 observer: IngestMetrics | None = None) -> None:
        self.s = settings
        self.name = name
        self.q = Queue(client, settings.partitions)
        self.store = UploadStore(client, partitions=settings.partitions)
        self.blobs = blobs
        self.stopping = asyncio.Event()
        # Every loop notices an outage of the buffer, but it is one event and logged as one.
        self.outage = Outage()
        # Told of every acknowledgement, finish, dead letter, entry error and batch.
        self.observer = observer if observer is not None else IngestMetrics()

    async def run(self) -> None:
        if not await until_available(self.q.ensure_groups, self.stopping):
            return
        loops = [asyncio.create_task(self.partition_loop(p)) for p in range(self.s.partitions)]
        loops.append(asyncio.create_task(self.reclaim_loop()))
        log.info("ingester started", extra={"consumer": self.name, "partitions": self.s.partitions})
        await self.stopping.wait()
        # Loops notice `stopping` between batches; a batch in progress completes or stays pending.
        await asyncio.wait(loops, timeout=self.s.ingest_block_ms / 1000 + 20)
        for t in loops:
            t.cancel()
        log.info("ingester stopped", extra={"consumer": self.name})

    async def partition_loop(self, p: int) -> None:
        own_pending = True  # after a restart, first finish what we held under this name
        while not self.stopping.is_set():
            try:
                raw = await self.q.read(p, self.name, self.s.ingest_read_count, self.s.ingest_block_ms,
                                        own_pending=own_pending)
                self.outage.back()
                if own_pending and not raw:
                    own_pending = False
                    continue
                self.observer.redelivered(len(raw) if own_pending else 0)
                await self.process(p, raw)
                if own_pending:
                    # Entries we keep failing stay pending under our name: leave them to reclaim.
                    own_pending = False
            except CONNECTION_ERRORS as e:
                self.outage.lost(e, "partition", p)
                # What we were handed before the outage is pending under our name: take it up again
                # as soon as Redis is back, rather than after the claim idle time.
                own_pending = True
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("partition loop error", extra={"partition": p})
                await asyncio.sleep(0.5)

    async def reclaim_loop(self) -> None:
        interval = max(self.s.ingest_claim_idle_ms / 2000, 0.05)
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), interval)
                return
            except asyncio.TimeoutError:
                pass
            for p in range(self.s.partitions):
                try:
                    claimed = await self.q.reclaim(p, self.name, self.s.ingest_claim_idle_ms, self.s.ingest_read_count)
                    self.outage.back()
                    live = []
                    for entry_id, fields in claimed:
                        parsed = parse_entry(entry_id, fields)
                        if parsed is None:
                            continue
                        n = await self.q.deliveries(p, parsed[0].entry_id)
                        if n > self.s.ingest_max_deliveries:
                            log.error("dead-lettering entry", extra={"partition": p, "entry": parsed[0].entry_id,
                                                                   "upload": parsed[0].u, "deliveries": n})
                            await self.dead_letter(p, parsed[0], n)
                        else:
                            live.append((entry_id, fields))
                    if live:
                        log.info("reclaimed entries", extra={"partition": p, "count": len(live)})
                        self.observer.redelivered(len(live))
                        await self.process(p, live)
                except CONNECTION_ERRORS as e:
                    self.outage.lost(e, "reclaim", p)
                except Exception:
                    log.exception("reclaim error", extra={"partition": p})

    @asynccontextmanager
    async def holding(self, p: int, entry_ids: list[str]):
        """Keep our claim on entries fresh while a long write or fsync runs."""
        async def beat():
            while True:
                await asyncio.sleep(max(self.s.ingest_claim_idle_ms / 3000, 0.05))
                try:
                    await self.q.keep_alive(p, self.name, entry_ids)
                except CONNECTION_ERRORS as e:  # losing a beat only risks a duplicate, which is harmless
                    self.outage.lost(e, "keep-alive", p)
                except Exception as e:
                    log.warning("keep-alive failed", extra={"error": repr(e)})
        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()

    # ---- every step that changes an entry's fate, told to the observer

    async def ack(self, p: int, done: list[Entry]) -> None:
        self.observer.acked(done, await self.q.ack(p, done))

    async def finish(self, p: int, e: Entry, outcome: str, *, sha256: str = "", reason: str = "",
                     failure: FailureKind | None = None) -> None:
        changed = await self.q.finish(p, e, outcome, sha256=sha256, reason=reason)
        self.observer.finished(e, outcome, changed, failure)

    async def dead_letter(self, p: int, e: Entry, deliveries: int) -> None:
        state = await self.q.upload(e.u)
        await self.q.dead_letter(p, e, deliveries)
        self.observer.dead_lettered(state is not None and state.state == RECEIVING)

    async def entry_error(self, p: int, entry_id: str, kind: EntryErrorKind, message: str) -> None:
        """Note why an entry failed this time: it stays pending, and the last note is its
        dead letter's reason if it never succeeds."""
        self.observer.entry_error(kind)
        await self.q.note_error(p, entry_id, message)

    async def process(self, p: int, raw: list) -> None:
        start = time.perf_counter()
        try:
            await self._process(p, raw)
        finally:
            self.observer.batch(time.perf_counter() - start)

    async def _process(self, p: int, raw: list) -> None:
        entries: list[tuple[Entry, bytes]] = []
        for entry_id, fields in raw:
            parsed = parse_entry(entry_id, fields)
            if parsed is None:
                # Deleted while pending (acknowledged elsewhere): just clear it from our PEL.
                await self.q.r.xack(keys.stream(p), self.q.group, entry_id)
                continue
            entries.append(parsed)
        if not entries:
            return
        async with self.holding(p, [e.entry_id for e, _ in entries]):
            data = [(e, d) for e, d in entries if e.k == DATA]
            if data:
                await self.store_data(p, data)
            for e, _ in entries:
                if e.k == DATA:
                    continue
                try:
                    await self.control(p, e)
                except UNAVAILABLE:
                    raise  # not this entry's fault: the partition loop waits for Redis and retries
                except Exception as exc:
                    log.warning("entry failed; will retry", extra={"entry": e.entry_id, "upload": e.u,
                                                                  "kind": e.k, "error": repr(exc)})
                    await self.entry_error(p, e.entry_id, EntryErrorKind.FAILED, f"{type(exc).__name__}: {exc}")

    async def store_data(self, p: int, data: list[tuple[Entry, bytes]]) -> None:
        states = await self.q.states(p, sorted({e.u for e, _ in data}))
        writes, done = [], []
        for e, d in data:
            if crc32c.crc32c(d) != e.c:
                await self.entry_error(p, e.entry_id, EntryErrorKind.CORRUPT,
                                       f"crc32c mismatch at offset {e.o}: the entry is corrupt")
                log.error("corrupt entry", extra={"entry": e.entry_id, "upload": e.u})
                continue
            state = states.get(e.u)
            if state == HELD:
                # Another entry of this upload was dead-lettered; this one waits beside it for
                # `unggah dead replay` (acknowledged unwritten, its bytes would be gone).
                await self.q.park(p, e)
                continue
            if state == RECEIVING:
                writes.append((e.u, e.o, d))
            done.append(e)  # terminated/failed/unknown uploads: nothing to write, just acknowledge
        try:
            await asyncio.to_thread(self.blobs.write, writes)
        except OSError as exc:
            log.warning("write failed; entries stay pending", extra={"partition": p, "error": repr(exc)})
            for e in done:
                await self.entry_error(p, e.entry_id, EntryErrorKind.WRITE_FAILED, f"write failed: {exc}")
            return
        await self.ack(p, done)

    async def control(self, p: int, e: Entry) -> None:
        state = await self.q.upload(e.u)
        if e.k == DROP:
            await asyncio.to_thread(self.blobs.discard, e.u)
            await self.ack(p, [e])
            return
        if state is None or state.state != RECEIVING:
            await self.ack(p, [e])  # already finished, or gone: nothing to do
            return
        if e.k == CONCAT:
            parts = state.parts.split()
            for part in parts:
                ps = await self.q.upload(part)
                if ps is not None and ps.state == FAILED and not held(ps.state, ps.reason):
                    await self.finish(p, e, FAILED, reason=f"partial upload {part} failed: {ps.reason}",
                                      failure=FailureKind.OTHER)
                    log.warning("final upload failed with its partial", extra={"upload": e.u, "partial": part})
                    return
                if ps is None or ps.state != STORED:
                    raise EntryError(f"partial {part} is not stored yet")
            await asyncio.to_thread(self.blobs.concat, e.u, parts)
        elif e.k != FIN:
            raise EntryError(f"unknown entry kind {e.k!r}")
        sha = await asyncio.to_thread(self.blobs.finalize, e.u, state.length)
        declared = declared_sha256(state.metadata)
        if declared and declared != sha:
            await self.finish(p, e, FAILED, sha256=sha, failure=FailureKind.SHA256_MISMATCH,
                              reason=f"sha256 mismatch: the client declared {declared}, the stored bytes have {sha}")
            log.warning("upload failed its declared checksum", extra={"upload": e.u})
        else:
            await self.finish(p, e, STORED, sha256=sha)
            log.info("upload stored", extra={"upload": e.u, "bytes": state.length, "sha256": sha})
        # A partial's final is assembled once all its partials are stored, and fails if one fails.
        # Read final_of only now, after FINISH: the gateway sets final_of and then checks
        # the partials' states, we set the state and then check final_of, so one of us
        # always sees both and queues the assembly (a duplicate is harmless).
        fresh = await self.q.upload(e.u)
        if fresh is not None and fresh.final_of:
            final = await self.q.upload(fresh.final_of)
            if final is not None:
                await self.store.queue_concat_if_ready(final.id, final.parts.split())


async def run(settings: Settings, name: str, metrics_port: int | None = None) -> int:
    client = connect(settings.redis_url, retry=False, cluster=settings.redis_cluster)  # a group's consumer: see connect
    server = None if metrics_port is None else await MetricsServer(settings.host, metrics_port).start()
    blobs = blob_store(settings)
    consumer = name if "." in name else f"{socket.gethostname()}.{name}"
    ing = Ingester(settings, consumer, client, blobs)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ing.stopping.set)
    try:
        await ing.run()
    finally:
        if server is not None:
            await server.stop()
        await client.aclose()
    return 0
