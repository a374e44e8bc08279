"""How both sides connect to Redis/Valkey."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, ConnectionError, TimeoutError

# Blocking reads (ingest) stay well below this; see Settings.ingest_block_ms.
SOCKET_TIMEOUT = 30.0


def connect(url: str, *, max_connections: int = 64, retry: bool = True,
            cluster: bool = False) -> redis.Redis | RedisCluster:
    """`retry`: replay a command on a fresh connection when its connection fails. After a
    Valkey restart every pooled connection is dead, and the gateway's requests should not
    fail for it: a replayed APPEND meets its own offset check and is recognised as a
    duplicate. Consumers of a group pass False: an XREADGROUP whose reply was lost has still
    delivered its entries (pending under the consumer's name), and a replay would read past
    them (the ingester would leave them for the claim idle time, the auditor would chain
    later records first and then drop them); their loops see the error instead and take up
    their own pending entries first.

    `cluster`: `url` is one seed node of a Valkey Cluster; the client reads the topology from
    it and follows MOVED and failovers itself. Every key of a partition carries its hash tag,
    so each script and each per-partition command lands on one node (buffer/keys.py)."""
    backoff = ExponentialBackoff(cap=0.5, base=0.05)
    if cluster:
        # The cluster client has no blocking pool: past `max_connections` per node it raises
        # instead of waiting. The gateway bounds its own concurrency (admission), so the
        # ceiling is set well above what it lets through rather than used as a queue.
        return RedisCluster.from_url(
            url,
            max_connections=max(max_connections, 512),
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=5.0,
            health_check_interval=30,
            retry=Retry(backoff, retries=6 if retry else 0),
            retry_on_error=[ConnectionError, TimeoutError] if retry else [],
        )
    # A blocking pool makes a burst of requests wait for a connection instead of
    # failing (the plain pool raises once it is exhausted).
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        retry=Retry(backoff, retries=3 if retry else 0),
        retry_on_error=[ConnectionError, TimeoutError] if retry else [],
    )
    return redis.Redis(connection_pool=pool)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


log = logging.getLogger("unggah.buffer")
# A cluster mid-failover answers CLUSTERDOWN (or MASTERDOWN) for the slots of the lost primary
# until its replica takes over: wait it out as a restart.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, ClusterDownError)


def connection_lost(e: BaseException) -> bool:
    """Whether `e` means the buffer was out of reach for a moment. Besides UNAVAILABLE: redis-py
    8.1.0's cluster client, on a connection a failover has just closed, fails inside its own
    transport ("'NoneType' object has no attribute 'writelines'", "the handler is closed")
    instead of raising ConnectionError. Recognised by where it was raised (redis-py's connection,
    or below it only the asyncio or uvloop transport it writes to), so that the same
    exceptions from our own code stay what they are (tests/test_cluster_failover.py)."""
    if isinstance(e, UNAVAILABLE):
        return True
    if not isinstance(e, (AttributeError, RuntimeError)):
        return False
    modules, tb = [], e.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    while modules and modules[-1].split(".")[0] in ("asyncio", "uvloop"):
        modules.pop()  # the transport redis-py writes to
    return bool(modules) and modules[-1] == "redis.asyncio.connection"


async def ensure_groups(client: redis.Redis, streams: Iterable[str], group: str) -> None:
    """Create a consumer group on each stream (and the stream), from its first entry."""
    for stream in streams:
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


async def until_available(setup: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> bool:
    """Run `setup` until Redis answers (it may still be starting, or restarting): a worker
    waits for it rather than dies. False if asked to stop first."""
    while True:
        try:
            await setup()
            return True
        except UNAVAILABLE as e:
            log.warning("waiting for redis", extra={"error": str(e)})
            try:
                await asyncio.wait_for(stopping.wait(), 0.5)
                return False
            except asyncio.TimeoutError:
                pass
