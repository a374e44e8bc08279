"""The gateway's side of the buffer: create, append to, read and terminate uploads.

HTTP knows nothing of keys or scripts; this module knows nothing of HTTP.
Outcomes come back as small Structs the handler maps to status codes.
"""

from __future__ import annotations

import collections
import time
from typing import Awaitable, Callable, Literal

import msgspec
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from buffer import keys
from buffer.connection import is_cluster
from buffer.messages import FAILED, STORED, TERMINATED, UploadState, from_fields, held
from buffer.scripts import Scripts, append_argv


def now_ms() -> int:
    return int(time.time() * 1000)


# The outcomes the write scripts return (buffer/scripts.py), one name each; tests/test_problems.py
# reads every `return {'...'` of CREATE, APPEND and TERMINATE and holds it against these.
CreateOutcome = Literal["created", "replay", "inflight", "mismatch",
                        "takeover"]  # takeover: the creation was in flight, its owner is gone
AppendOutcome = Literal["ok", "conflict", "complete", "notfound", "final", "closed", "expired", "exceeds",
                        "too_large", "full", "length_fixed", "length_short", "revoked"]
TerminateOutcome = Literal["ok", "notfound", "closed", "complete"]


class Created(msgspec.Struct):
    outcome: CreateOutcome
    upload_id: str


class Appended(msgspec.Struct):
    outcome: AppendOutcome
    # The current offset; for exceeds and length_fixed the length, for too_large the maximum,
    # for length_short the least length allowed.
    offset: int = 0
    record: str = ""  # conflict: what was accepted earlier at this PATCH's start offset
    detail: str = ""


class UploadStore:
    def __init__(self, client: redis.Redis, *, partitions: int,
                 waitaof: tuple[int, int, int] = (0, 0, 0), wait_replicas: int = 0, clock=time.time,
                 owner: str = "", lease_ms: int = 5000,
                 on_append: Callable[[float, "Appended | None", int], None] | None = None) -> None:
        self.r = client
        self.clock = clock  # the server's clock; tests of windows and expiry control it
        self.partitions = partitions
        self.scripts = Scripts(client)
        self.waitaof = waitaof  # (numlocal, numreplicas, timeout_ms)
        self.wait_replicas = wait_replicas  # WAIT numreplicas, within waitaof's timeout
        # This gateway process's boot id: it owns the creations it marks in flight, and keeps
        # them alive (renew_creations) only while it lives. '' (the ingesters): owns none.
        self.owner = owner
        self.lease_ms = lease_ms
        self.owned: collections.Counter[int] = collections.Counter()  # partition -> creations in flight
        # Told of every commit APPEND made: (seconds it took, its outcome or None if it raised,
        # the bytes it carried).
        # The gateway's metrics time the buffer here; the buffer itself knows nothing of them.
        self.on_append = on_append

    def partition(self, upload_id: str) -> int | None:
        return keys.partition_of(upload_id, self.partitions)

    async def create(self, *, tenant: str, length: int, metadata: str = "", concat: str = "",
                     parts: list[str] | None = None, expires_at: int = 0, window: str = "",
                     idempotency_key: str = "", fingerprint: str = "", pending: bool = False,
                     idempotency_ttl: int = 86400, inflight_ms: int = 60_000, actor: str = "") -> Created:
        if idempotency_key:
            p = keys.partition_for_key(tenant, idempotency_key, self.partitions)
        else:
            p = keys.random_partition(self.partitions)
        upload_id = keys.new_upload_id(p)
        now = int(self.clock() * 1000)
        state = UploadState(id=upload_id, tenant=tenant, length=length, metadata=metadata,
                            concat=concat, parts=" ".join(parts or []), created_at=now,
                            expires_at=expires_at, window=window)
        if concat == "final":
            state.offset = length
            state.received_at = now
        fields: list[object] = []
        for k, v in msgspec.structs.asdict(state).items():
            fields += [k, v]
        ks = [keys.upload(p, upload_id), keys.stream(p), keys.audit(p)]
        if idempotency_key:
            ks.append(keys.idempotency(p, tenant, idempotency_key))
            ks.append(keys.owners(p))
        res = await self._durable(self.scripts.create, ks,
                                  [upload_id, now, fingerprint, idempotency_ttl, inflight_ms,
                                   int(pending), actor or tenant, length, self.owner, self.lease_ms, *fields])
        created = Created(res[0].decode(), res[1].decode())
        if created.outcome == "created" and pending and idempotency_key:
            self.owned[p] += 1  # until creation_done
        return created

    async def creation_done(self, tenant: str, idempotency_key: str) -> None:
        """The creation marked in flight has read its body (or given up on it): retries replay it."""
        p = keys.partition_for_key(tenant, idempotency_key, self.partitions)
        try:
            await self.r.hset(keys.idempotency(p, tenant, idempotency_key), "pending", 0)
        finally:
            self.owned[p] -= 1
            if self.owned[p] <= 0:
                del self.owned[p]

    async def renew_creations(self) -> None:
        """Renew this process's lease in every partition where it has a creation in flight
        (LEASE, one round trip). Run more often than the lease lasts; a process that stops
        running it, killed or frozen, loses its creations to the next retry once it lapses."""
        if not self.owner:
            return
        partitions = [p for p, n in self.owned.items() if n > 0]
        if not partitions:
            return
        async def queue(pipe) -> None:
            for p in partitions:
                await self._queue(pipe, self.scripts.lease, [keys.owners(p)], [self.owner, self.lease_ms])
        await self._pipelined(queue)

    async def release_creations(self) -> None:
        """An orderly stop: the creations this process still holds in flight will not be
        finished by it, so a retry may take them over at once."""
        if not self.owner or not self.owned:
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for p in list(self.owned):
                pipe.zrem(keys.owners(p), self.owner)
            await pipe.execute()

    async def get(self, upload_id: str) -> UploadState | None:
        p = self.partition(upload_id)
        if p is None:
            return None
        raw = await self.r.hgetall(keys.upload(p, upload_id))
        return from_fields(raw, UploadState) if raw else None

    async def confirm(self, upload_id: str) -> None:
        """With WAITAOF or WAIT configured: return once they confirm every write the primary had
        made to this upload, or raise DurabilityError. A refused append (its wait ran out) still
        left its bytes on the primary; HEAD calls this before it reports an offset that counts
        them, since a client resumes from that offset, and stops if it says the file is whole."""
        numlocal, numreplicas, _ = self.waitaof
        p = self.partition(upload_id)
        if p is None or not (numlocal or numreplicas or self.wait_replicas):
            return
        await self._durable(self.scripts.confirm, [keys.upload(p, upload_id)], [])

    async def append(self, upload_id: str, offset: int, pieces: list[tuple[int, bytes]], *,
                     tenant: str, patch_start: int, record: str = "", new_length: int | None = None,
                     buffer_limit: int = 0, actor: str = "", token_hash: str = "",
                     patch_bytes: int | None = None, max_bytes: int) -> Appended:
        """`patch_bytes`: the whole PATCH body's size when known (Content-Length), so a body
        too long for the upload is refused before any of it is taken; `max_bytes`: the cap on
        an upload whose length is still deferred."""
        p = self.partition(upload_id)
        if p is None:
            return Appended("notfound")
        args = append_argv(pieces, id=upload_id, offset=offset, now_ms=int(self.clock() * 1000), patch_start=patch_start,
                           record=record, new_length="" if new_length is None else new_length,
                           buffer_limit=buffer_limit, tenant=tenant, actor=actor or tenant, token_hash=token_hash,
                           patch_bytes="" if patch_bytes is None else patch_bytes, max_bytes=max_bytes)
        start = time.perf_counter()
        try:
            res = await self._durable(self.scripts.append,
                                      [keys.upload(p, upload_id), keys.stream(p), keys.buffered_bytes(p),
                                       keys.records(p, upload_id), keys.audit(p), keys.revoked(p)], args)
        except BaseException:
            if self.on_append is not None:  # a commit that failed took its time too (a timeout, say)
                self.on_append(time.perf_counter() - start, None, 0)
            raise
        outcome = res[0].decode()
        if outcome == "conflict":
            result = Appended(outcome, int(res[1]), res[2].decode())
        elif outcome == "closed":
            result = Appended(outcome, detail=res[1].decode())
        else:
            result = Appended(outcome, int(res[1]) if len(res) > 1 else 0)
        if self.on_append is not None:
            self.on_append(time.perf_counter() - start, result, sum(len(d) for _, d in pieces))
        return result

    async def terminate(self, upload_id: str, actor: str = "") -> TerminateOutcome:
        p = self.partition(upload_id)
        if p is None:
            return "notfound"
        res = await self._durable(self.scripts.terminate,
                                  [keys.upload(p, upload_id), keys.stream(p), keys.records(p, upload_id),
                                   keys.audit(p)],
                                  [upload_id, actor, int(self.clock() * 1000)])
        return res[0].decode()

    async def link_final(self, final: UploadState) -> str | None:
        """Claim each partial for this final (a partial belongs to the first final that claims
        it); queue the assembly if all are settled. The partial another final holds, or None.

        Not atomic across partitions, and need not be: the ingester that finishes the
        last partial also checks, and so does a status read of a final still waiting
        (which mends a link or a trigger lost to a crash between the steps).
        """
        parts = final.parts.split()
        for part in parts:
            if not await self.scripts.claim_part(keys=[keys.upload(self.partition(part), part)], args=[final.id]):
                return part
        await self.queue_concat_if_ready(final.id, parts)
        return None

    async def abandon_final(self, final: UploadState, actor: str) -> None:
        """Undo a final that lost a partial to another final created at the same moment."""
        for part in final.parts.split():
            await self.scripts.release_part(keys=[keys.upload(self.partition(part), part)], args=[final.id])
        p = self.partition(final.id)
        await self.r.hset(keys.upload(p, final.id), "state", TERMINATED)
        await self.audit_many([(p, self.audit_fields("terminate", {"u": final.id, "t": final.tenant, "a": actor,
                                                                    "reason": "partial-taken"}))])

    async def queue_concat_if_ready(self, final_id: str, parts: list[str]) -> bool:
        """Queue the final's assembly once every partial is settled: stored, or failed for
        good (the assembly then fails the final with that partial's reason). A partial held
        by a dead letter may still be replayed, so it is waited for. Queued once only."""
        for part in parts:
            state, reason = (v.decode() if v else "" for v in
                             await self.r.hmget(keys.upload(self.partition(part), part), "state", "reason"))
            settled = state == STORED or (state == FAILED and not held(state, reason))
            if not settled:
                return False
        p = self.partition(final_id)
        return bool(await self.scripts.queue_assembly(keys=[keys.upload(p, final_id), keys.stream(p)], args=[final_id]))

    def audit_fields(self, event: str, fields: dict[str, object]) -> dict[str, str]:
        """An audit record the scripts do not write themselves (refusals), stamped now."""
        return {"ev": event, "at": str(int(self.clock() * 1000)), **{k: str(v) for k, v in fields.items()}}

    async def audit_many(self, records: list[tuple[int, dict[str, str]]]) -> None:
        """Append (partition, record) pairs to the audit streams, in order, in one round trip."""
        async with self.r.pipeline(transaction=False) as pipe:
            for partition, record in records:
                pipe.xadd(keys.audit(partition), record)
            await pipe.execute()

    async def mark_lost(self, upload_id: str, acked: int, tenant: str, tombstone_ttl: int, *,
                        witness: str = "gateway-witness", run: str = "") -> int | None:
        """Report that `upload_id` had `acked` bytes acknowledged that the buffer may no longer
        hold (MARK_LOST, on behalf of `witness`, after the restart to server run id `run`): the
        offset it has now, -1 if it is gone, None if nothing was lost or this loss was reported
        already after the same restart."""
        p = self.partition(upload_id)
        if p is None:
            return None
        res = int(await self.scripts.mark_lost(
            keys=[keys.upload(p, upload_id), keys.lost(p, upload_id), keys.audit(p)],
            args=[upload_id, acked, int(self.clock() * 1000), tombstone_ttl, tenant, witness, run]))
        return None if res == -2 else res

    async def lost_acknowledged(self, upload_id: str) -> int | None:
        """The offset acknowledged to an upload the buffer lost whole (its tombstone), or None."""
        p = self.partition(upload_id)
        if p is None:
            return None
        v = await self.r.get(keys.lost(p, upload_id))
        return int(v) if v is not None else None

    async def server_id(self) -> str:
        """The buffer's run id: it changes when the server restarts. On a cluster, the run ids of
        all its primaries: a failover (a replica promoted) changes it too, and that is exactly
        when writes not yet on the replica may be gone (the witness then checks, gateway/witness)."""
        if is_cluster(self.r):
            infos = await self.r.info("server", target_nodes=RedisCluster.PRIMARIES)
            return ",".join(sorted(str(i.get("run_id", "")) for i in infos.values()))
        info = await self.r.info("server")
        return str(info.get("run_id", ""))

    async def buffered(self) -> int:
        # One GET per partition on a pipeline, not MGET: on a cluster the partitions live in
        # different slots, and a multi-key command must not cross them.
        async with self.r.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.get(keys.buffered_bytes(p))
            vals = await pipe.execute()
        return sum(int(v or 0) for v in vals)

    async def _pipelined(self, queue: Callable[[object], Awaitable[None]]) -> list:
        """Execute a pipeline that `queue` fills. A cluster pipeline cannot reload a script the
        node does not know (NOSCRIPT comes back only from execute, and a promoted replica knows
        none): then load them all and run it once more. NOSCRIPT means the script did not run,
        so running the pipeline again changes nothing twice."""
        for attempt in (0, 1):
            async with self.r.pipeline(transaction=False) as pipe:
                await queue(pipe)
                try:
                    return await pipe.execute()
                except NoScriptError:
                    if attempt:
                        raise
            await self.scripts.load()
        raise AssertionError("unreachable")

    async def _queue(self, pipe, script, ks: list[str], args: list[object]) -> None:
        """Queue one script call on `pipe`. redis-py refuses `evalsha` on a cluster pipeline
        (its issue 2914; still so in 8.1.0) but sends the same command given raw, routed by its
        keys; on a plain pipeline the Script's own call queues it (a coroutine, hence async)."""
        if is_cluster(self.r):
            pipe.execute_command("EVALSHA", script.sha, len(ks), *ks, *args)
        else:
            await script(keys=ks, args=args, client=pipe)

    async def _durable(self, script, ks: list[str], args: list[object]):
        """Run a write script; with WAITAOF or WAIT configured, wait for the AOF fsyncs or the
        replicas on the same connection (both cover only writes made on their own connection).
        On a cluster they name no key: they are sent to the node that owns the script's keys,
        and a cluster pipeline sends each node's commands in order on one connection."""
        numlocal, numreplicas, timeout = self.waitaof
        if not (numlocal or numreplicas or self.wait_replicas):
            return await script(keys=ks, args=args)
        if is_cluster(self.r):
            await self.r.initialize()  # the slot table, before asking it for a node (a no-op once read)
            target = {"target_nodes": self.r.get_node_from_key(ks[0])}
        else:
            target = {}

        async def queue(pipe) -> None:
            await self._queue(pipe, script, ks, args)
            if numlocal or numreplicas:
                pipe.execute_command("WAITAOF", numlocal, numreplicas, timeout, **target)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, timeout, **target)
        res, *confirmed = await self._pipelined(queue)
        if target and self.r.get_node_from_key(ks[0]).name != target["target_nodes"].name:
            # The slot moved while the pipeline ran (MOVED): redis-py ran the script again alone,
            # on the new owner, and the waits above confirmed nothing of that. Unconfirmed, so not
            # acknowledged: the client's retry meets the APPEND offset check.
            raise DurabilityError("the partition's slot moved during the write; its durability is unconfirmed")
        if numlocal or numreplicas:
            local, replicas = confirmed.pop(0)
            if local < numlocal or replicas < numreplicas:
                raise DurabilityError(f"WAITAOF confirmed {local} local / {replicas} replica fsyncs, "
                                      f"wanted {numlocal}/{numreplicas}")
        if self.wait_replicas and confirmed[0] < self.wait_replicas:
            raise DurabilityError(f"WAIT confirmed {confirmed[0]} replicas, wanted {self.wait_replicas}")
        return res


class DurabilityError(RuntimeError):
    """The write happened but the requested durability was not confirmed in time."""

