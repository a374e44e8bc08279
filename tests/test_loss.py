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
import socket

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
    from stores.blobs import LocalBlobStore
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


# ---------------------------------------------------------------- the audit chain as witness

LOSS_SERIES = ('unggah_acknowledged_lost_total{what="bytes"}', 'unggah_acknowledged_lost_total{what="upload"}',
               "unggah_acknowledged_lost_bytes_total")


def loss_counts(text: str) -> dict[str, float]:
    return {s: float(line.split()[1]) for line in text.splitlines() for s in LOSS_SERIES if line.startswith(s + " ")}


def counted_now() -> dict[str, float]:
    """The process's loss counts (every witness in this process counts into them)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from metrics.registry import ACKED_LOST, ACKED_LOST_BYTES
    reg = CollectorRegistry()
    reg.register(ACKED_LOST)
    reg.register(ACKED_LOST_BYTES)
    return loss_counts(generate_latest(reg).decode())


async def scraped(http: aiohttp.ClientSession, auditor) -> dict[str, float]:
    """The loss counts on the auditor's own /metrics, over HTTP (as Prometheus reads them)."""
    assert auditor.metrics.url.startswith("http://127.0.0.1:"), auditor.metrics.url  # this host only, by default
    async with http.get(auditor.metrics.url) as resp:
        assert resp.status == 200
        return loss_counts(await resp.text())


def chained(settings, ev: str) -> list[dict]:
    from ingest.audit import audit_dir
    from unggah import auditlog
    return [rec.event for f in sorted(audit_dir(settings).glob("audit-p*.jsonl")) for rec in auditlog.read(f)
            if rec.event.get("ev") == ev]


def lost_lines(caplog) -> list:
    return [rec for rec in caplog.records if rec.getMessage() == "acknowledged bytes lost with the buffer"]


async def run_auditor(settings):
    """The real auditor loop (lease, witness, drain), in this process; stop it with `stop_auditor`."""
    from buffer.connection import connect
    from ingest.audit import Auditor
    auditor = Auditor(settings, connect(settings.redis_url, retry=False))
    return auditor, asyncio.create_task(auditor.run())


async def stop_auditor(auditor, task) -> None:
    auditor.stopping.set()
    try:
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        await auditor.r.aclose()
    # Its /metrics stopped with it: nothing listens on the port any more.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", auditor.metrics.port), timeout=2).close()


@pytest.mark.timeout(120)
async def test_the_audit_chain_reports_what_the_buffer_lost_when_the_gateway_went_down_with_it(tmp_path, caplog):
    """The whole machine goes down: Valkey (everysec) comes back without its last acknowledged
    writes, and the gateway that acknowledged them is gone, its witness's memory with it. The
    auditor had chained them: when it starts again it finds the loss and reports it, status,
    log, counts and audit record, exactly as the gateway's witness would have; a second start
    reports nothing new, and neither would the gateway's witness asking after it."""
    from buffer.connection import connect
    from buffer.store import UploadStore
    from ingest.audit import Auditor
    from unggah import auditlog

    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="everysec").start()
    snapshot = tmp_path / "valkey-before-the-crash"
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    running = None
    try:
        async with aiohttp.ClientSession() as http:
            short = await create(http, gw, 1000)
            assert (await patch(http, short, 0, b"a" * 400)).status == 204
            await asyncio.sleep(1.5)  # on disk: everysec has written and fsynced it
            shutil.copytree(vk.data_dir, snapshot)
            assert (await patch(http, short, 400, b"b" * 600)).status == 204
            gone = await create(http, gw, 10)
            # The auditor read them before the crash: the chain on disk has them, Valkey's disk not.
            before_crash = Auditor(settings, connect(vk.url, retry=False))
            await before_crash.ensure_groups()
            assert await before_crash.take_lease()
            assert await before_crash.drain_once() >= 3
            await before_crash.r.aclose()
            # Everything goes down at once.
            await gw.stop()
            vk.kill()
            shutil.rmtree(vk.data_dir)
            shutil.copytree(snapshot, vk.data_dir)
            (vk.data_dir / "lock").unlink(missing_ok=True)
            vk.start()
            gw = await Gateway(settings).start()  # a new gateway: it witnessed nothing
            short, gone = (gw.files + url.rsplit("/", 1)[1] for url in (short, gone))
            counted = counted_now()
            lines = len(lost_lines(caplog))

            running = await run_auditor(settings)
            auditor = running[0]

            async def checked() -> bool:
                return auditor.witness.checks >= 1
            await wait_for(checked, 15)
            assert auditor.witness.reported == 2

            code, st = await status(http, short)
            assert code == 200 and st["state"] == "receiving" and st["bytes_received"] == 400
            assert st["reason"] == "buffer-lost-acknowledged-bytes"
            assert st["lost"]["acknowledged_offset"] == 1000 and st["lost"]["resume_from"] == 400
            code, body = await status(http, gone)
            assert code == 410 and body["reason"] == "upload-lost"

            logged = lost_lines(caplog)[lines:]
            assert sorted((rec.acknowledged, rec.offset_now, rec.witness) for rec in logged) == [
                (0, -1, "audit-witness"), (1000, 400, "audit-witness")]
            # Counted on the auditor's own /metrics, as the gateways count theirs.
            assert {s: v - counted[s] for s, v in (await scraped(http, auditor)).items()} == {
                'unggah_acknowledged_lost_total{what="bytes"}': 1, 'unggah_acknowledged_lost_total{what="upload"}': 1,
                "unggah_acknowledged_lost_bytes_total": 600}

            # The loss records are chained like every other record, and the trail still verifies.
            async def loss_chained() -> list:
                return chained(settings, "loss")
            losses = await wait_for(loss_chained, 10)
            assert sorted((e["u"], e["acked"], e["now"], e["a"]) for e in losses) == sorted([
                (short.rsplit("/", 1)[1], "1000", "400", "audit-witness"),
                (gone.rsplit("/", 1)[1], "0", "-1", "audit-witness")])
            from ingest.audit import audit_dir
            assert all(rep.ok for rep in auditlog.verify_trail(audit_dir(settings))), \
                auditlog.verify_trail(audit_dir(settings))

            # The gateway's witness asking after it (had it survived) hears that nothing new was lost.
            r = connect(vk.url)
            try:
                store = UploadStore(r, partitions=settings.partitions)
                run = await store.server_id()  # the restart both witnesses saw
                assert await store.mark_lost(short.rsplit("/", 1)[1], 1000, "public", 60, run=run) is None
                assert await store.mark_lost(gone.rsplit("/", 1)[1], 0, "public", 60, run=run) is None
            finally:
                await r.aclose()

            # A second start checks the same tail again and reports nothing new.
            await stop_auditor(*running)
            running = await run_auditor(settings)
            again = running[0]

            async def checked_again() -> bool:
                return again.witness.checks >= 1
            await wait_for(checked_again, 15)
            await asyncio.sleep(0.5)  # time to chain anything it wrote
            assert again.witness.reported == 0
            assert len(lost_lines(caplog)) == lines + 2
            assert len(chained(settings, "loss")) == 2
            assert (await scraped(http, again))["unggah_acknowledged_lost_bytes_total"] == \
                counted["unggah_acknowledged_lost_bytes_total"] + 600
            assert (await status(http, short))[1]["lost"]["acknowledged_offset"] == 1000
    finally:
        if running is not None:
            await stop_auditor(*running)
        await gw.stop()
        vk.stop()


@pytest.mark.timeout(120)
async def test_the_audit_chain_reports_no_loss_for_uploads_that_moved_on(tmp_path, caplog):
    """An upload stored (its entries ingested and trimmed from the stream) and one terminated
    are in the chain's tail when Valkey restarts having lost nothing: the running auditor checks
    them against the buffer and reports nothing, nor does a fresh start of it."""
    from buffer.connection import connect
    from stores.blobs import LocalBlobStore
    from ingest.worker import Ingester
    from tests.conftest import wait_stored

    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="everysec").start()
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    ing_client = connect(vk.url, retry=False)
    ing = Ingester(settings, "t.ingest", ing_client, LocalBlobStore(settings.blob_path))
    ing_task = asyncio.create_task(ing.run())
    running = await run_auditor(settings)
    auditor = running[0]
    r = connect(vk.url)  # replays a command over the restart
    counted = counted_now()
    lines = len(lost_lines(caplog))
    try:
        async with aiohttp.ClientSession() as http:
            stored = await create(http, gw, 6)
            assert (await patch(http, stored, 0, b"abc")).status == 204
            assert (await patch(http, stored, 3, b"def")).status == 204
            assert (await wait_stored(http, stored))["state"] == "stored"
            ended = await create(http, gw, 9)
            assert (await patch(http, ended, 0, b"abc")).status == 204
            async with http.delete(ended, headers=TUS) as resp:
                assert resp.status == 204

            async def settled() -> bool:
                lens = [await r.xlen(k) for p in range(settings.partitions) for k in (keys.stream(p), keys.audit(p))]
                return sum(lens) == 0 and len(chained(settings, "stored")) == 1
            await wait_for(settled, 15)  # ingested, trimmed from the stream, chained
            checks = auditor.witness.checks
            assert checks >= 1  # at start
            ing.stopping.set()
            await ing_task
            await asyncio.sleep(1.5)  # on Valkey's disk: the restart loses nothing
            vk.kill()
            vk.start()

            async def checked() -> bool:
                return auditor.witness.checks > checks
            await wait_for(checked, 15)

            # And an auditor starting afresh checks the same tail: nothing either.
            await stop_auditor(*running)
            running = await run_auditor(settings)

            async def checked_at_start() -> bool:
                return running[0].witness.checks >= 1
            await wait_for(checked_at_start, 15)

            assert auditor.witness.reported == 0 and running[0].witness.reported == 0
            code, st = await status(http, stored)
            assert code == 200 and st["state"] == "stored" and "lost" not in st
            assert (await status(http, ended))[0] == 404  # terminated: not found, and no tombstone (410)
            assert lost_lines(caplog)[lines:] == []
            assert chained(settings, "loss") == [] and not [
                f for p in range(settings.partitions) for _, f in await r.xrange(keys.audit(p)) if f[b"ev"] == b"loss"]
            assert await scraped(http, running[0]) == counted
    finally:
        await stop_auditor(*running)
        if not ing_task.done():
            ing.stopping.set()
            await ing_task
        await ing_client.aclose()
        await r.aclose()
        await gw.stop()
        vk.stop()


async def test_the_same_bytes_lost_in_a_second_crash_after_they_were_sent_again_are_reported_again(tmp_path):
    """A crash restores the state from before the client resent what the first crash took, with
    the first report in it: only the restart it came back from tells the second loss apart."""
    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="always").start()
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    r = aioredis.Redis.from_url(vk.url)
    try:
        async with aiohttp.ClientSession() as http:
            url = await create(http, gw, 1000)
            upload_id = url.rsplit("/", 1)[1]
            assert (await patch(http, url, 0, b"a" * 1000)).status == 204
            store = gw.app[TUS_HANDLER].store
            state = keys.upload(store.partition(upload_id), upload_id)

            async def crash_back_to(offset: int) -> None:  # the state a crash leaves: fewer bytes
                await r.hset(state, "offset", offset)

            await crash_back_to(400)
            assert await store.mark_lost(upload_id, 1000, "public", 60, run="run-after-crash-1") == 400
            # The other witness, after the same restart: nothing new.
            assert await store.mark_lost(upload_id, 1000, "public", 60, witness="audit-witness",
                                         run="run-after-crash-1") is None
            # The client sends the 600 bytes again; a second crash takes them again, restoring the
            # state in which the first report stands.
            await r.hset(state, "offset", 1000)
            await crash_back_to(400)
            assert await store.mark_lost(upload_id, 1000, "public", 60, run="run-after-crash-2") == 400
            assert await store.mark_lost(upload_id, 1000, "public", 60, run="run-after-crash-2") is None
            events = [f for _, f in await r.xrange(keys.audit(store.partition(upload_id))) if f[b"ev"] == b"loss"]
            assert [(e[b"acked"], e[b"now"], e[b"a"]) for e in events] == [(b"1000", b"400", b"gateway-witness")] * 2
    finally:
        await r.aclose()
        await gw.stop()
        vk.stop()
