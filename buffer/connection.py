"""How both sides connect to Redis/Valkey."""

from __future__ import annotations

import redis.asyncio as redis

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
    )
    return redis.Redis(connection_pool=pool)
