"""How both sides connect to Redis/Valkey."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

# Blocking reads (ingest) stay well below this; see Settings.ingest_block_ms.
SOCKET_TIMEOUT = 30.0


def connect(url: str, *, max_connections: int = 64) -> redis.Redis:
    # A blocking pool makes a burst of requests wait for a connection instead of
    # failing (the plain pool raises once it is exhausted).
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        # After a Valkey restart every pooled connection is dead; retry on a fresh one
        # instead of failing the request. Safe for our scripts: a replayed APPEND meets
        # its own offset check and is recognised as a duplicate.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return redis.Redis(connection_pool=pool)
