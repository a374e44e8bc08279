"""Valkey killed with SIGKILL and restarted on the same data directory.

Under `appendfsync always` every acknowledged append is on disk before the
answer. Under `everysec` a process crash usually loses nothing, but not always:
while a background fsync is still running, Valkey postpones the AOF write for up
to 2 s and keeps answering (docs/architecture.md). Either way the state must be
consistent: each upload's offset equals the bytes its stream entries hold, and
the byte counter equals what the streams hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest
import redis.asyncio as aioredis

from buffer import keys
from tests.conftest import (OCTET, Gateway, buffer_empty, create, head, make_settings, patch, wait_for,
                            wait_stored)
from tests.test_e2e import stored_bytes
from unggah.valkey import EmbeddedValkey


async def buffered_state(r, partitions: int) -> tuple[dict[str, int], dict[str, bytes], int, int]:
    offsets, data, counted, in_streams = {}, {}, 0, 0
    for p in range(partitions):
        counted += int(await r.get(keys.buffered_bytes(p)) or 0)
        for _, f in await r.xrange(keys.stream(p)):
            if f[b"k"] == b"d":
                u = f[b"u"].decode()
                data[u] = data.get(u, b"") + f[b"d"]
                in_streams += len(f[b"d"])
    for key in await r.keys("unggah:*:up:*"):
        h = await r.hgetall(key)
        offsets[h[b"id"].decode()] = int(h[b"offset"])
    return offsets, data, counted, in_streams


@pytest.mark.parametrize("policy", ["always", "everysec"])
async def test_sigkill_valkey_and_restart(tmp_path, policy):
    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync=policy).start()
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    blobs = [os.urandom(2_000_000) for _ in range(8)]
    acked: dict[str, int] = {}
    killed = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            urls = [await create(http, gw, len(b)) for b in blobs]

            async def send(url: str, data: bytes):
                off = 0
                while off < len(data) and not killed.is_set():
                    resp = await patch(http, url, off, data[off:off + 65536])
                    if resp.status != 204:
                        return
                    off = int(resp.headers["Upload-Offset"])
                    acked[url.rsplit("/", 1)[1]] = off

            async def kill_soon():
                await asyncio.sleep(0.4)
                vk.kill()
                killed.set()

            await asyncio.gather(*(send(u, b) for u, b in zip(urls, blobs)), kill_soon())
            assert acked, "nothing was acknowledged before the kill"

            # While Valkey is down the gateway refuses with a status every tus client retries.
            async with http.patch(urls[0], data=b"x", headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]

            vk.start()
            r = aioredis.Redis.from_url(vk.url)
            offsets, data, counted, in_streams = await buffered_state(r, settings.partitions)
            for url, blob in zip(urls, blobs):
                uid = url.rsplit("/", 1)[1]
                # Consistent: the offset is exactly what the stream holds, and it is a prefix of the file.
                assert len(data.get(uid, b"")) == offsets[uid]
                assert data.get(uid, b"") == blob[:offsets[uid]]
                if policy == "always":
                    # Nothing acknowledged is lost. (Under everysec a kill during a slow
                    # background fsync may lose the last appends: only consistency holds.)
                    assert offsets[uid] >= acked.get(uid, 0)
            assert counted == in_streams

            # Resume every upload from HEAD and let an ingester store them.
            from stores.blobs import LocalBlobStore
            from ingest.worker import Ingester
            from buffer.connection import connect
            ing_client = connect(vk.url, retry=False)  # as `unggah ingest` connects
            ing = Ingester(settings, "t.ingest", ing_client, LocalBlobStore(settings.blob_path))
            task = asyncio.create_task(ing.run())
            try:
                for url, blob in zip(urls, blobs):
                    off = int((await head(http, url)).headers["Upload-Offset"])
                    if off < len(blob):
                        assert (await patch(http, url, off, blob[off:])).status == 204
                for url, blob in zip(urls, blobs):
                    st = await wait_stored(http, url)
                    assert st["sha256"] == hashlib.sha256(blob).hexdigest()
                    assert stored_bytes(settings, url) == blob
                await wait_for(lambda: buffer_empty(r))
            finally:
                ing.stopping.set()
                await task
                await ing_client.aclose()
                await r.aclose()
    finally:
        await gw.stop()
        vk.stop()


async def test_restart_mid_drain(tmp_path):
    """Valkey dies while an ingester is draining; after the restart the same ingester finishes
    the drain at once: what it held stays pending under its name and is taken up again, not
    left for another consumer's reclaim after the claim idle time (here far longer than the test)."""
    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="always").start()
    settings = make_settings(tmp_path, vk.url, ingest_claim_idle_ms=300_000)
    gw = await Gateway(settings).start()
    from tests.conftest import IngesterProcess
    ing = None
    try:
        async with aiohttp.ClientSession() as http:
            blobs = [os.urandom(3_000_000) for _ in range(6)]
            urls = []
            for b in blobs:
                u = await create(http, gw, len(b))
                assert (await patch(http, u, 0, b)).status == 204
                urls.append(u)
            (tmp_path / "state").mkdir(exist_ok=True)
            ing = IngesterProcess(settings, "t.ingest-a")
            # Kill Valkey while the ingester holds delivered, unacknowledged entries. It drains
            # 18 MB in well under 100 ms, so it is frozen (SIGSTOP) for each look: a stopped
            # process cannot acknowledge between the look and the kill.
            r = aioredis.Redis.from_url(vk.url)

            async def holding() -> bool:
                ing.freeze()
                for p in range(settings.partitions):
                    try:
                        if (await r.xpending(keys.stream(p), keys.GROUP))["pending"]:
                            return True
                    except aioredis.ResponseError:  # group not created yet
                        pass
                ing.thaw()
                return False
            await wait_for(holding, timeout=20, interval=0.002)
            await r.aclose()
            vk.kill()
            await asyncio.sleep(1.0)
            vk.start()
            ing.thaw()  # it finds its connection gone, reconnects and takes up what it held
            for url, blob in zip(urls, blobs):
                st = await wait_stored(http, url, 30)
                assert st["sha256"] == hashlib.sha256(blob).hexdigest()
                assert stored_bytes(settings, url) == blob
            r = aioredis.Redis.from_url(vk.url)
            await wait_for(lambda: buffer_empty(r))
            await r.aclose()
    finally:
        if ing:
            ing.kill()
        await gw.stop()
        vk.stop()
