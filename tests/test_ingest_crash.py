"""Every byte accounted for through crashes: real ingester processes, SIGKILL, reclaim,
duplicate delivery, dead letters and replay."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

from redis.exceptions import ResponseError

from buffer import keys
from buffer.connection import connect
from buffer.queue import Queue, parse_entry
from stores.blobs import LocalBlobStore
from tests.conftest import (buffer_empty, child_env, create, patch, status, wait_for, wait_stored)
from tests.test_e2e import send_partial_patch, stored_bytes


async def upload_all(http, gateway, blobs: list[bytes], chunk: int = 256 * 1024) -> list[str]:
    async def one(data: bytes) -> str:
        url = await create(http, gateway, len(data))
        for off in range(0, len(data), chunk):
            assert (await patch(http, url, off, data[off:off + chunk])).status == 204
        return url
    return await asyncio.gather(*(one(b) for b in blobs))


async def stored_count(http, urls) -> int:
    return sum([(await status(http, u))["bytes_stored"] for u in urls])


async def test_kill_ingester_mid_batch_another_reclaims(gateway, http, r, settings, ingester_procs):
    blobs = [os.urandom(4_000_000) for _ in range(6)]
    urls = await upload_all(http, gateway, blobs)
    total = sum(map(len, blobs))
    a = ingester_procs("t.ingest-a")
    await wait_for(lambda: stored_count(http, urls), 20, 0.01)  # a has started storing
    a.kill()
    assert await stored_count(http, urls) < total, "ingester finished before it could be killed; use more data"
    ingester_procs("t.ingest-b")
    for url, data in zip(urls, blobs):
        st = await wait_stored(http, url, 60)
        assert st["state"] == "stored" and st["sha256"] == hashlib.sha256(data).hexdigest()
        assert stored_bytes(settings, url) == data
        assert st["bytes_stored"] == len(data)  # counted once, whatever was written twice
    await wait_for(lambda: buffer_empty(r))


async def test_duplicate_delivery_changes_nothing(gateway, http, r, settings, ingester_procs):
    """A consumer writes entries and dies before acknowledging: another writes them again."""
    data = os.urandom(1_500_000)
    [url] = await upload_all(http, gateway, [data])
    upload_id = url.rsplit("/", 1)[1]
    p = int(upload_id.split("-")[0])
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    q = Queue(client, settings.partitions)
    await q.ensure_groups()
    raw = await q.read(p, "t.ghost", 100, 100)
    blobs = LocalBlobStore(settings.blob_path)
    writes = [(e.u, e.o, d) for e, d in (parse_entry(i, f) for i, f in raw) if e.k == "d"]
    blobs.write(writes)  # written, never acknowledged
    await client.aclose()
    ingester_procs("t.ingest-a")  # reclaims after the idle timeout and writes them again
    st = await wait_stored(http, url, 30)
    assert st["sha256"] == hashlib.sha256(data).hexdigest() and st["bytes_stored"] == len(data)
    assert stored_bytes(settings, url) == data
    await wait_for(lambda: buffer_empty(r))


async def test_restart_with_pending_entries_under_the_same_name(gateway, http, r, settings, ingester_procs, tmp_path):
    data = os.urandom(1_000_000)
    [url] = await upload_all(http, gateway, [data])
    p = int(url.rsplit("/", 1)[1].split("-")[0])
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    q = Queue(client, settings.partitions)
    await q.ensure_groups()
    # The ingester read these and was killed before doing anything with them.
    assert await q.read(p, "t.ingest-7", 100, 100)
    await client.aclose()
    # With reclaim effectively off, only the restarted consumer itself can take them back.
    from tests.conftest import make_settings
    slow = make_settings(tmp_path, settings.redis_url, ingest_claim_idle_ms=3_600_000,
                         state_dir=settings.state_dir)
    from tests.conftest import IngesterProcess
    proc = IngesterProcess(slow, "t.ingest-7")
    try:
        st = await wait_stored(http, url, 30)
        assert st["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        proc.kill()
    await wait_for(lambda: buffer_empty(r))


def dead_cli(settings, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "commands.cli", "dead", *args], env=child_env(settings),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_poison_entry_is_dead_lettered_and_replayed(gateway, http, r, settings, ingester_procs):
    data = os.urandom(300_000)
    url = await create(http, gateway, len(data))
    upload_id = url.rsplit("/", 1)[1]
    # The poison: the upload's file path is taken by a directory, so every write fails.
    blocker = Path(settings.blob_path) / "partial" / upload_id
    blocker.mkdir(parents=True)
    await patch(http, url, 0, data)
    ingester_procs("t.ingest-a")

    async def failed():
        st = await status(http, url)
        return st if st["state"] == "failed" else None
    st = await wait_for(failed, 40)
    assert st["reason"].startswith("dead-letter:") and "write failed" in st["reason"]
    listing = dead_cli(settings, "list")
    assert upload_id in listing and "deliveries" in listing
    p = int(upload_id.split("-")[0])
    assert await r.xlen(keys.dead(p)) == 1
    blocker.rmdir()  # the fix
    dead_cli(settings, "replay")
    st = await wait_stored(http, url, 30)
    assert st["state"] == "stored" and st["sha256"] == hashlib.sha256(data).hexdigest()
    assert await r.xlen(keys.dead(p)) == 0
    await wait_for(lambda: buffer_empty(r))


async def test_a_dead_letter_keeps_its_uploads_later_entries_for_the_replay(gateway, http, r, settings,
                                                                           ingester_procs):
    """The upload's first entry is dead-lettered while its later entries, already acknowledged to
    the client, are still in the stream. Those are kept beside the dead letter, not dropped, so
    `unggah dead replay` brings every byte back and the upload is stored."""
    data = os.urandom(300_000)
    url = await create(http, gateway, len(data))
    upload_id = url.rsplit("/", 1)[1]
    p = int(upload_id.split("-")[0])
    blocker = Path(settings.blob_path) / "partial" / upload_id  # every write fails until it goes
    blocker.mkdir(parents=True)
    assert (await patch(http, url, 0, data[:100_000])).status == 204
    ingester_procs("t.ingest-a")

    async def first_failed_twice() -> bool:
        try:
            rows = await r.xpending_range(keys.stream(p), keys.GROUP, min="-", max="+", count=1)
        except ResponseError:  # the ingester has not made its group yet
            return False
        return bool(rows) and rows[0]["times_delivered"] >= 2
    await wait_for(first_failed_twice, 20)
    # The rest arrives now, so the first entry runs out of deliveries before these do.
    assert (await patch(http, url, 100_000, data[100_000:200_000])).status == 204
    assert (await patch(http, url, 200_000, data[200_000:])).status == 204

    async def all_three_dead() -> bool:
        return await r.xlen(keys.dead(p)) == 3 and await r.xlen(keys.stream(p)) == 0
    await wait_for(all_three_dead, 40)
    st = await status(http, url)
    assert st["state"] == "failed" and st["reason"].startswith("dead-letter:")
    assert "kept for replay" in dead_cli(settings, "list")
    blocker.rmdir()  # the fix
    dead_cli(settings, "replay")
    st = await wait_stored(http, url, 30)
    assert st["sha256"] == hashlib.sha256(data).hexdigest()
    assert await r.xlen(keys.dead(p)) == 0
    await wait_for(lambda: buffer_empty(r))


def test_two_assemblies_of_one_final_never_change_the_file_being_finalised(tmp_path):
    """A final's assembly can be queued twice and so run in two ingesters at once. While one
    finalises, the other's assembly must not truncate or rewrite the file under it: the stored
    file and its sha256 (what the receipt signs) are always the partials' bytes in order."""
    blobs = LocalBlobStore(tmp_path)
    parts = [os.urandom(4 << 20) for _ in range(4)]
    part_ids = [f"0-part{i}" for i in range(len(parts))]
    for upload_id, data in zip(part_ids, parts):
        blobs.write([(upload_id, 0, data)])
        blobs.finalize(upload_id, len(data))
    whole = b"".join(parts)
    for n in range(8):
        final = f"0-final{n}"
        stop = threading.Event()

        def rival() -> None:
            while not stop.is_set():
                blobs.concat(final, part_ids)

        t = threading.Thread(target=rival)
        t.start()
        try:
            blobs.concat(final, part_ids)
            sha = blobs.finalize(final, len(whole))
        finally:
            stop.set()
            t.join()
        assert sha == hashlib.sha256(whole).hexdigest()
        assert blobs.stored_path(final).read_bytes() == whole


async def test_fifty_uploads_cut_patches_and_a_killed_ingester(gateway, http, r, settings, ingester_procs):
    rng = random.Random(7)
    blobs = [os.urandom(rng.randint(50_000, 1_500_000)) for _ in range(50)]
    a = ingester_procs("t.ingest-a")
    ingester_procs("t.ingest-b")

    async def one(data: bytes) -> str:
        url = await create(http, gateway, len(data))
        off = 0
        while off < len(data):
            n = min(rng.randint(10_000, 400_000), len(data) - off)
            if rng.random() < 0.2 and n > 2:
                # Cut mid-body, then resume from HEAD like a tus client.
                await send_partial_patch(gateway.port, url, off, n, data[off:off + n // 2])
                async with http.head(url, headers={"Tus-Resumable": "1.0.0"}) as resp:
                    off = int(resp.headers["Upload-Offset"])
                continue
            resp = await patch(http, url, off, data[off:off + n])
            if resp.status == 503:  # admission control shedding: wait as told (scaled down), resume
                assert resp.headers["Retry-After"]
                await asyncio.sleep(0.1)
                async with http.head(url, headers={"Tus-Resumable": "1.0.0"}) as h:
                    off = int(h.headers["Upload-Offset"])
                continue
            # 409: the cut PATCH's bytes were committed after our HEAD; resume from the
            # offset the server names, as tus clients do.
            assert resp.status in (204, 409), resp.status
            off = int(resp.headers["Upload-Offset"])
        return url

    async def killer():
        await asyncio.sleep(1.0)
        a.kill()

    urls, _ = await asyncio.gather(asyncio.gather(*(one(b) for b in blobs)), killer())
    for url, data in zip(urls, blobs):
        st = await wait_stored(http, url, 60)
        assert st["sha256"] == hashlib.sha256(data).hexdigest(), url
    await wait_for(lambda: buffer_empty(r), 30)
