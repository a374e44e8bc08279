"""Loss is never silent: when the buffer comes back from a crash without data the gateway had
acknowledged (appendfsync everysec), the gateway finds it and says so (gateway/witness.py).

A kill -9 under everysec loses acknowledged appends only when it falls while a background
fsync is slow (Valkey then postpones its AOF writes and keeps answering), which no test can
arrange at will. What such a crash leaves is arranged exactly instead: Valkey's data
directory is copied, more is acknowledged, Valkey is killed and started again on the copy.
It then lacks what was acknowledged after the copy, as a crash in that window leaves it.
"""

from __future__ import annotations

import asyncio
import shutil

import aiohttp
import pytest
import redis.asyncio as aioredis

from buffer import keys
from gateway.app import TUS as TUS_HANDLER
from tests.conftest import TUS, Gateway, create, make_settings, patch, wait_for
from unggah.valkey import EmbeddedValkey


async def status(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with http.get(url + "/status") as resp:
        return resp.status, await resp.json(content_type=None)


async def metric(http: aiohttp.ClientSession, gw: Gateway, series: str) -> float:
    async with http.get(gw.url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.timeout(120)
async def test_acknowledged_bytes_and_uploads_the_buffer_came_back_without_are_reported_everywhere(tmp_path, caplog):
    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="everysec").start()
    snapshot = tmp_path / "valkey-before-the-crash"
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    try:
        async with aiohttp.ClientSession() as http:
            counted = {s: await metric(http, gw, s) for s in (
                'unggah_acknowledged_lost_total{what="bytes"}', 'unggah_acknowledged_lost_total{what="upload"}',
                "unggah_acknowledged_lost_bytes_total")}
            short = await create(http, gw, 1000)
            assert (await patch(http, short, 0, b"a" * 400)).status == 204
            await asyncio.sleep(1.5)  # on disk: everysec has written and fsynced it
            shutil.copytree(vk.data_dir, snapshot)
            # Acknowledged after the copy: what the crash takes.
            resp = await patch(http, short, 400, b"b" * 600)
            assert resp.status == 204 and resp.headers["Upload-Offset"] == "1000"
            gone = await create(http, gw, 10)
            vk.kill()
            shutil.rmtree(vk.data_dir)
            shutil.copytree(snapshot, vk.data_dir)
            (vk.data_dir / "lock").unlink(missing_ok=True)
            vk.start()

            async def reported() -> bool:
                return (await status(http, short))[1].get("reason") == "buffer-lost-acknowledged-bytes"
            await wait_for(reported, 15)

            code, st = await status(http, short)
            assert code == 200 and st["state"] == "receiving" and st["bytes_received"] == 400
            assert st["lost"]["acknowledged_offset"] == 1000 and st["lost"]["resume_from"] == 400
            assert not st["safe_to_delete_local_copy"]
            code, body = await status(http, gone)
            assert code == 410 and body["reason"] == "upload-lost" and "create it again" in body["detail"]

            # One upload short by 600 bytes, one gone (it had 0 bytes acknowledged).
            assert {s: await metric(http, gw, s) - n for s, n in counted.items()} == {
                'unggah_acknowledged_lost_total{what="bytes"}': 1, 'unggah_acknowledged_lost_total{what="upload"}': 1,
                "unggah_acknowledged_lost_bytes_total": 600}
            assert any(rec.levelname == "ERROR" and rec.getMessage() == "acknowledged bytes lost with the buffer"
                       for rec in caplog.records)
            r = aioredis.Redis.from_url(vk.url)
            try:
                events = [f for p in range(settings.partitions) for _, f in await r.xrange(keys.audit(p))
                          if f[b"ev"] == b"loss"]
            finally:
                await r.aclose()
            assert sorted((e[b"acked"], e[b"now"]) for e in events) == [(b"0", b"-1"), (b"1000", b"400")]

            # The client resumes from what is there (HEAD), and the upload is whole again.
            async with http.head(short, headers=TUS) as resp:
                assert resp.headers["Upload-Offset"] == "400"
            assert (await patch(http, short, 400, b"b" * 600)).status == 204
            code, st = await status(http, short)
            assert "lost" not in st and st["reason"] != "buffer-lost-acknowledged-bytes"
    finally:
        await gw.stop()
        vk.stop()


async def test_under_always_a_restart_reports_no_loss(tmp_path):
    """The contrast: the same crash under appendfsync always loses nothing, so nothing is reported."""
    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="always").start()
    gw = await Gateway(make_settings(tmp_path, vk.url)).start()
    witness = gw.app[TUS_HANDLER].witness
    try:
        async with aiohttp.ClientSession() as http:
            async def seen() -> bool:
                return bool(witness.run_id)
            await wait_for(seen, 5)
            url = await create(http, gw, 1000)
            assert (await patch(http, url, 0, b"a" * 1000)).status == 204
            before = witness.run_id
            # The counters are the process's: other tests' gateways count into them too.
            lost_before = await metric(http, gw, 'unggah_acknowledged_lost_total{what="bytes"}')
            vk.kill()
            vk.start()

            async def looked() -> bool:
                return witness.run_id not in ("", before) and not witness.recent
            await wait_for(looked, 15)
            code, st = await status(http, url)
            assert code == 200 and "lost" not in st and st["bytes_received"] == 1000
            assert await metric(http, gw, 'unggah_acknowledged_lost_total{what="bytes"}') == lost_before
    finally:
        await gw.stop()
        vk.stop()


@pytest.mark.timeout(120)
async def test_push_sends_again_by_itself_what_the_server_lost_after_acknowledging_it(tmp_path):
    """`unggah push` sends a file; the server acknowledges every byte, then its buffer comes
    back from a crash without the upload. The next push is told (410 upload-lost) and sends
    the file again by itself, to stored, with the right sha256."""
    import hashlib
    import os

    from buffer.connection import connect
    from client.api import push
    from ingest.blobstore import LocalBlobStore
    from ingest.worker import Ingester

    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="everysec").start()
    snapshot = tmp_path / "valkey-before-the-crash"
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    folder = tmp_path / "kirim"
    folder.mkdir()
    data = os.urandom(300_000)
    (folder / "ktp.pdf").write_bytes(data)
    ing_client = task = None
    try:
        await asyncio.sleep(1.5)  # the witness has seen the server
        shutil.copytree(vk.data_dir, snapshot)
        # No ingester yet: the upload is acknowledged whole but not stored.
        first = await push([folder], gw.url, state_path=tmp_path / "s.json", wait=1)
        assert [f.state for f in first.files] == ["pending"]
        vk.kill()
        shutil.rmtree(vk.data_dir)
        shutil.copytree(snapshot, vk.data_dir)
        (vk.data_dir / "lock").unlink(missing_ok=True)
        vk.start()
        url = first.files[0].url
        async with aiohttp.ClientSession() as http:
            async def reported() -> bool:
                return (await status(http, url))[0] == 410
            await wait_for(reported, 15)
        ing_client = connect(vk.url, retry=False)
        ing = Ingester(settings, "t.ingest", ing_client, LocalBlobStore(settings.blob_path))
        task = asyncio.create_task(ing.run())
        again = await push([folder], gw.url, state_path=tmp_path / "s.json", wait=30)
        [f] = again.files
        assert f.state == "stored" and f.url != url, (f.state, f.reason, f.notes)
        assert any("lost this upload" in n for n in f.notes)
        async with aiohttp.ClientSession() as http:
            code, st = await status(http, f.url)
        assert code == 200 and st["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        if task is not None:
            ing.stopping.set()
            await task
            await ing_client.aclose()
        await gw.stop()
        vk.stop()
