"""`unggah audit run`: move audit events from the partitions' audit streams into the
hash-chained files on disk (unggah.auditlog), then delete them from Redis.

Exactly one auditor may run: it holds a lease in Redis and refuses to start while
another holds it, because two writers would fork a chain.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from pathlib import Path

import redis.asyncio as redis

from buffer import keys
from buffer.connection import connect, ensure_groups
from unggah.auditlog import REDELIVERY_WINDOW, Chain, ChainGap, ChainMismatch, chain_path
from unggah.config import Settings

log = logging.getLogger("unggah.audit")
GROUP = "audit"
LEASE = f"{keys.PREFIX}:auditor:lease"
LEASE_MS = 10_000


def audit_dir(settings: Settings) -> Path:
    return Path(settings.state_dir) / "audit"


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
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as e:
                log.warning("redis unavailable; retrying", extra={"error": str(e)})
                await asyncio.sleep(0.5)
        await self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                          1, LEASE, self.token)
        return 0


async def run(settings: Settings) -> int:
    # No replayed commands: a replayed XREADGROUP ">" would chain the next batch before the one
    # whose reply was lost, and the chain then skips that one as already written.
    client = connect(settings.redis_url, retry=False)
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
