"""Three ingester processes drain a Valkey Cluster; one is killed (SIGKILL) mid-drain while it
holds entries. The other two reclaim what it held, every upload is stored once with its bytes,
and nothing is left pending, in any partition, on any primary."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from pathlib import Path

import aiohttp
import pytest

from buffer import keys
from tests.conftest import (CLUSTER, IngesterProcess, buffer_empty, create, head, make_settings, patch, wait_for,
                            wait_stored)
from tests.test_e2e import stored_bytes
from unggah import processes
from unggah.processes import free_port

pytestmark = pytest.mark.skipif(not CLUSTER, reason="needs the local Valkey Cluster: UNGGAH_TEST_CLUSTER=1 "
                                                    "(./dev test-cluster)")

UPLOADS = 60
CHUNK = 128 * 1024


@pytest.fixture
def settings(tmp_path, valkey, r):
    # Entries idle for 3 s are reclaimed (the suite's default is 1 s): the test reads what the
    # victim held after killing it, well before the survivors may take it.
    return make_settings(tmp_path, valkey.url, ingest_claim_idle_ms=3000)


class MeteredIngester(IngesterProcess):
    """`unggah ingest` with its /metrics served, so the survivors can be asked what they reclaimed."""

    def __init__(self, settings, name: str) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.proc = processes.start(
            processes.command("ingest", "--name", name, "--metrics-port", str(self.metrics_port)),
            env=processes.environment(settings), log=Path(settings.state_dir) / f"{name}.log")

    async def serving(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"http://127.0.0.1:{self.metrics_port}/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def counter(self, http: aiohttp.ClientSession, metric: str) -> float:
        async with http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric + " ")]
        assert len(values) == 1, f"{metric} not served by {self.name}"
        return values[0]


@pytest.fixture
def ingesters(settings):
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    started: list[MeteredIngester] = []

    def start(name: str) -> MeteredIngester:
        started.append(MeteredIngester(settings, name))
        return started[-1]

    yield start
    for p in started:
        p.kill()  # SIGKILL ends a stopped process too


async def upload(http, gateway, data: bytes) -> str:
    """A whole upload in CHUNK PATCHes, each with its Upload-Checksum, the file's sha256 declared."""
    declared = base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()
    url = await create(http, gateway, len(data), Upload_Metadata=f"sha256 {declared}")
    off = 0
    while off < len(data):
        piece = data[off:off + CHUNK]
        resp = await patch(http, url, off, piece,
                           Upload_Checksum="sha1 " + base64.b64encode(hashlib.sha1(piece).digest()).decode())
        if resp.status == 503:  # shed by admission control: wait as told (scaled down), resume from HEAD
            assert resp.headers["Retry-After"]
            await asyncio.sleep(0.1)
            off = int((await head(http, url)).headers["Upload-Offset"])
            continue
        assert resp.status == 204, resp.status
        off = int(resp.headers["Upload-Offset"])
    return url


async def pending_of(r, settings, consumer: str) -> dict[int, list[str]]:
    """The entries pending under `consumer`, per partition (each on the primary that holds it)."""
    out = {}
    for p in range(settings.partitions):
        rows = await r.xpending_range(keys.stream(p), keys.GROUP, min="-", max="+", count=10_000,
                                      consumername=consumer)
        if rows:
            out[p] = [row["message_id"].decode() for row in rows]
    return out


async def test_a_killed_ingesters_entries_are_reclaimed_and_every_upload_is_stored_once(
        gateway, http, r, settings, ingesters):
    # The partitions' streams are spread over the primaries (not all on one node).
    primaries = {r.get_node_from_key(keys.stream(p)).name for p in range(settings.partitions)}
    assert len(primaries) >= 2, primaries

    rng = random.Random(22)
    blobs = [os.urandom(rng.randint(200_000, 600_000)) for _ in range(UPLOADS)]
    victim = ingesters("t.ingest-a")
    survivors = [ingesters("t.ingest-b"), ingesters("t.ingest-c")]
    for ing in (victim, *survivors):
        await wait_for(lambda: ing.serving(http), 20)
    # Ten at a time, so uploads are stored one after another while the three drain; the kill
    # comes a third of the way through, and the rest arrive after it.
    gate = asyncio.Semaphore(10)
    sent: list[str] = []

    async def one(data: bytes) -> str:
        async with gate:
            url = await upload(http, gateway, data)
        sent.append(url)
        return url
    uploading = asyncio.gather(*(one(b) for b in blobs))

    # Stop the victim while it holds entries, once it has drained its share of a third of the
    # uploads, then SIGKILL it: what it held stays pending under its name.
    drained = 0.0

    async def caught_holding() -> dict[int, list[str]]:
        nonlocal drained
        if len(sent) < UPLOADS // 3 or not await pending_of(r, settings, victim.name):
            return {}
        drained = await victim.counter(http, "unggah_ingest_bytes_total")  # read while it still runs
        victim.freeze()
        held = await pending_of(r, settings, victim.name)
        if not held or not drained:
            victim.thaw()
            return {}
        return held
    try:
        held = await wait_for(caught_holding, 30, 0.002)
    except BaseException:
        uploading.cancel()
        raise
    finally:
        victim.kill()
    uploaded_at_kill = len(sent)
    # Read again now that it is dead: an acknowledgement it sent just before it stopped may
    # have removed some. Nobody takes these for 3 s.
    died_holding = await pending_of(r, settings, victim.name)
    assert died_holding, held
    urls = await uploading
    assert uploaded_at_kill < UPLOADS, "the uploads finished before the kill; use more data"
    ids = [u.rsplit("/", 1)[1] for u in urls]
    assert {int(i.split("-")[0]) for i in ids} == set(range(settings.partitions)), "every partition has uploads"
    held_ids = [(p, i) for p, entry_ids in died_holding.items() for i in entry_ids]

    for url, data in zip(urls, blobs):
        st = await wait_stored(http, url, 60)
        assert st["state"] == "stored", st
        assert st["sha256"] == hashlib.sha256(data).hexdigest(), url
        assert st["bytes_stored"] == len(data), url  # counted once, whatever was written twice
        assert stored_bytes(settings, url) == data

    # What the victim held was reclaimed by the survivors, processed and deleted; nothing is
    # pending under anyone's name in any partition.
    async def nothing_pending() -> bool:
        for p in range(settings.partitions):
            summary = await r.xpending(keys.stream(p), keys.GROUP)
            if summary["pending"]:
                return False
        return True
    await wait_for(nothing_pending, 30)
    assert await pending_of(r, settings, victim.name) == {}
    for p, entry_id in held_ids:
        assert await r.xrange(keys.stream(p), entry_id, entry_id) == [], (p, entry_id)
    reclaimed = sum([await s.counter(http, "unggah_ingest_redeliveries_total") for s in survivors])
    assert reclaimed >= len(held_ids), (reclaimed, died_holding)

    # Each upload finished once: one completion event apiece, no dead letter, every byte counter at zero.
    completions: list[bytes] = []
    for p in range(settings.partitions):
        completions += [fields[b"u"] for _, fields in await r.xrange(keys.completed(p))]
        assert await r.xlen(keys.dead(p)) == 0
    assert sorted(completions) == sorted(i.encode() for i in ids)
    await wait_for(lambda: buffer_empty(r), 30)
