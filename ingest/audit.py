"""`unggah audit run`: move audit events from the partitions' audit streams into the
hash-chained files on disk (unggah.auditlog), then delete them from Redis.

Exactly one auditor may run: it holds a lease in Redis and refuses to start while
another holds it, because two writers would fork a chain.

The auditor is also the second witness of what the buffer acknowledged (ChainWitness): at
start, and whenever the buffer server restarts, it compares the tail of its chains with the
buffer, so that a loss is not silent when the gateways that acknowledged it crashed too. It
counts what it finds on its own /metrics (audit_metrics_host:audit_metrics_port, job
`unggah-audit`), served from a thread beside the event loop for as long as `Auditor.run` runs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from pathlib import Path
from typing import Callable

import msgspec
import redis.asyncio as redis
from buffer import keys, loss
from buffer.connection import connect, connection_lost, ensure_groups
from buffer.store import UploadStore
from metrics.registry import count_acknowledged_loss, make_registry
from metrics.supervisor import ThreadMetricsServer
from unggah.auditlog import REDELIVERY_WINDOW, Chain, ChainGap, ChainMismatch, chain_path, entry_ms, tail
from unggah.config import Settings

log = logging.getLogger("unggah.audit")
GROUP = "audit"
LEASE = f"{keys.PREFIX}:auditor:lease"
LEASE_MS = 10_000
# How often the buffer server's run id is read.
POLL = 0.5
WITNESS = "audit-witness"


def audit_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "audit"


def acknowledged_offset(event: dict[str, str]) -> int | None:
    """The offset a chained record says the buffer had taken and answered for: 0 for a
    creation (the upload exists), the end of an append; None for any other record."""
    try:
        if event.get("ev") == "create":
            return 0
        if event.get("ev") == "append":
            return int(event["o"]) + int(event["n"])
    except (KeyError, ValueError):
        pass
    return None


class ChainWitness:
    """The audit chain on disk as a witness of what the buffer acknowledged, for when the
    gateways' witnesses (gateway/witness.py) died with the buffer: a crash of the machine, or
    of the gateways with Valkey. At every start of the auditor (it cannot know whether it went
    down with the buffer) and whenever the buffer's run id changes, it reads each chain's last
    records, takes per upload the highest offset they show acknowledged (a creation: 0; an
    append: its end), and asks the buffer about each through the step both witnesses share
    (buffer/loss.py, MARK_LOST): an upload that has less is reported short (its status says
    what to send again), one that is gone gets a tombstone (410 upload-lost), each with an
    error log line, the `unggah_acknowledged_lost_*` counts and an audit record (`ev: loss`,
    `a: audit-witness`).

    What the chain can hold. It is downstream of the buffer: the script that takes an append
    or a creation writes its audit entry in the same step, into Valkey's memory, and the
    auditor copies entries from there to the chain (fsynced) before deleting them. So a record
    is chained only after Valkey had it, and Valkey may lose it still (everysec writes its AOF
    up to about 2 s late); the chain holds it only if the auditor read it before the crash.
    Under `appendfsync always` Valkey has every write on disk before it sends any reply, the
    auditor's read of it included, so nothing chained can be missing: this witness finds nothing.

    It sees: every creation and append chained before the crash that the buffer came back
    without, whoever acknowledged it and whatever else crashed, as long as the chain files
    survived. The auditor chains within about 0.2 s when it keeps up, and an everysec loss
    spans up to about 2 s, so it sees most of such a loss.

    It cannot see:
    - what was acknowledged after the auditor's last read before the crash (the last fraction
      of a second; more while the auditor was behind or down): those records went with
      Valkey's memory. Only a gateway's witness that survived sees them; with both gone that
      part of a loss is silent. `appendfsync always`, or WAITAOF, is the only way to lose none;
    - records older than WINDOW before where a chain stood when the same server was last
      seen: they are taken to be on Valkey's disk (everysec writes within about 2 s). A check
      reads only those last seconds, from the file's end, however long the chain;
    - lost state other than creations and appends: a completion, a termination, a PATCH
      record or an idempotency record (none is bytes a client was told are safe; the ingester
      finishes an upload again from the entries the buffer kept).

    It may report a little more than was acknowledged: the chain holds what the buffer took,
    including bytes whose answer never reached the client (its gateway died first, or WAITAOF
    timed out); the status then says to resume from the buffer's offset, which such a client
    does anyway. Uploads that moved on are not reported: the buffer keeps
    every upload's state and offset (stored, failed, terminated, expired; ingested entries are
    trimmed from the stream, not from the state), and MARK_LOST reports only an offset below the
    acknowledged one, or a missing upload. MARK_LOST reports a loss once, so a second check, or
    a loss the gateway's witness reported first, adds nothing. A buffer emptied on purpose under
    an old audit trail is reported as the loss it is to the last uploads' clients.
    """

    def __init__(self, store: UploadStore, chains: list[Chain], on_loss: loss.OnLoss | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.chains = chains
        self.on_loss = on_loss
        self.clock = clock
        self.run_id = ""
        # Where each chain stood when the server was last seen the same. At first: where the
        # chains stand at start, before anything the server answering now holds is chained.
        self.seen = self.positions()
        self.due = True  # at start: this process may have crashed with the buffer
        self.next_look = 0.0
        self.checks = 0  # checks done
        self.reported = 0  # uploads reported lost

    def positions(self) -> list[str]:
        return [c.last_id for c in self.chains]

    async def look(self) -> None:
        """A look at the server (every POLL seconds): a check if it is due or the server restarted.
        A check that fails (the server still loading) stays due, from the same positions."""
        if not self.due and self.clock() < self.next_look:
            return
        run_id = await self.store.server_id()
        if self.run_id and run_id != self.run_id:
            log.warning("the buffer restarted: checking the audit chains' last records against it")
            self.due = True
        if self.due:
            await self.check(self.seen, run_id)
            self.due = False
        self.run_id = run_id
        self.seen = self.positions()
        self.next_look = self.clock() + POLL

    async def check(self, since: list[str], run: str = "") -> int:
        """Ask the buffer (as server run `run`) about what the chains hold from WINDOW before
        `since` (one entry id per chain) to their ends; the number of uploads reported lost."""
        acknowledged: dict[str, tuple[int, str]] = {}
        for chain, last in zip(self.chains, since):
            try:
                records = await asyncio.to_thread(tail, chain.path, entry_ms(last) - int(loss.WINDOW * 1000))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
                log.error("cannot read the end of an audit chain to check the buffer against it; run "
                          "`unggah audit verify`", extra={"chain": str(chain.path), "error": str(e)})
                continue
            for rec in records:
                acked = acknowledged_offset(rec.event)
                upload_id = rec.event.get("u", "")
                if acked is None or not upload_id:
                    continue
                if upload_id not in acknowledged or acked > acknowledged[upload_id][0]:
                    acknowledged[upload_id] = (acked, rec.event.get("t", ""))
        found = await loss.report(self.store, acknowledged, WITNESS, self.on_loss, run)
        self.checks += 1
        self.reported += found
        log.info("checked the buffer against the audit chains", extra={"uploads": len(acknowledged), "lost": found})
        return found


class LeaseLost(Exception):
    """Another auditor holds the lease now: chaining on would fork the chains."""


class Auditor:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.s = settings
        self.r = client
        # ChainMismatch if a chain file holds another partition's chain (swapped or renamed files).
        self.chains = [Chain(chain_path(audit_dir(settings), p), p) for p in range(settings.partitions)]
        self.token = secrets.token_hex(8)
        self.stopping = asyncio.Event()
        self.witness = ChainWitness(UploadStore(client, partitions=settings.partitions), self.chains,
                                    on_loss=count_acknowledged_loss)
        # Served while run() runs; port 0: the kernel picks one (`unggah up` passes the one it picked).
        self.metrics = ThreadMetricsServer(settings.audit_metrics_host, settings.audit_metrics_port,
                                           make_registry("audit"), "auditor", log)

    async def take_lease(self) -> bool:
        if await self.r.set(LEASE, self.token, nx=True, px=LEASE_MS):
            return True
        return (await self.r.get(LEASE)) == self.token.encode()

    async def renew(self) -> bool:
        # Renew only if still ours (compare-and-set in one step).
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
        return bool(await self.r.eval(script, 1, LEASE, self.token, LEASE_MS))

    async def ensure_groups(self) -> None:
        await ensure_groups(self.r, [keys.audit(p) for p in range(self.s.partitions)], GROUP)

    async def drain_once(self) -> int:
        """Move what is waiting on every partition; the number of records chained.
        One partition at a time (no multi-stream read), so it also runs on a cluster."""
        moved = 0
        for p in range(self.s.partitions):
            stream = keys.audit(p)
            # First anything read but not acknowledged before a crash, then new entries.
            for start in ("0", ">"):
                res = await self.r.xreadgroup(GROUP, "auditor", {stream: start}, count=REDELIVERY_WINDOW)
                entries = res[0][1] if res else []
                if not entries:
                    continue
                # Checked before every write, not once per drain: a drain slowed by a slow disk
                # must not outlive the lease and write beside the auditor that took it over.
                if not await self.renew():
                    raise LeaseLost()
                live = [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in entries if f]
                moved += await asyncio.to_thread(self.chains[p].append, live)
                async with self.r.pipeline(transaction=True) as pipe:
                    pipe.xack(stream, GROUP, *[i for i, _ in entries])
                    pipe.xdel(stream, *[i for i, _ in entries])
                    await pipe.execute()
        return moved

    async def run(self) -> int:
        """Serve /metrics, then chain until stopped; the exit code (1: the lease was lost, a chain
        gap, or the metrics port cannot be had)."""
        try:
            self.metrics.start()
        except OSError as e:
            log.error("the auditor's /metrics cannot listen; choose another audit_metrics_port "
                      "(UNGGAH_AUDIT_METRICS_PORT; 0 picks a free one)",
                      extra={"host": self.s.audit_metrics_host, "port": self.s.audit_metrics_port, "error": str(e)})
            return 1
        try:
            return await self._chain()
        finally:
            # Off the event loop: shutdown() waits for the server thread's next poll (up to 0.5 s).
            await asyncio.to_thread(self.metrics.stop)

    async def _chain(self) -> int:
        while not await self.take_lease():
            log.warning("another auditor holds the lease; waiting")
            try:
                await asyncio.wait_for(self.stopping.wait(), LEASE_MS / 1000)
                return 0
            except asyncio.TimeoutError:
                pass
        await self.ensure_groups()
        log.info("auditor started", extra={"dir": str(audit_dir(self.s))})
        while not self.stopping.is_set():
            try:
                if not await self.renew():
                    raise LeaseLost()
                # Before the drain: a check compares what was chained before the server restarted.
                await self.witness.look()
                if not await self.drain_once():
                    try:
                        await asyncio.wait_for(self.stopping.wait(), 0.2)
                    except asyncio.TimeoutError:
                        pass
            except LeaseLost:
                log.error("lost the auditor lease; stopping so chains are not forked")
                return 1
            except ChainGap as e:
                log.error("audit chain gap; stopping with the entry still in its stream", extra={"error": str(e)})
                return 1
            except Exception as e:
                # A cluster mid-failover (CLUSTERDOWN, a connection redis-py's transport has just
                # lost) is a wait too, as for the ingesters; anything else is a fault to stop on.
                if not connection_lost(e):
                    raise
                log.warning("redis unavailable; retrying", extra={"error": str(e)})
                await asyncio.sleep(0.5)
        await self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                          1, LEASE, self.token)
        return 0


async def run(settings: Settings) -> int:
    # No replayed commands: a replayed XREADGROUP ">" would chain the next batch before the one
    # whose reply was lost, and the chain then skips that one as already written.
    client = connect(settings.redis_url, retry=False, cluster=settings.redis_cluster)
    try:
        auditor = Auditor(settings, client)
    except ChainMismatch as e:
        log.error("audit chain files do not match their partitions; not writing on them", extra={"error": str(e)})
        await client.aclose()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, auditor.stopping.set)
    try:
        return await auditor.run()
    finally:
        await client.aclose()
