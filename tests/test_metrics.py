"""Metrics follow an upload's life; buffer gauges come from Redis; refusals are logged once.

Metric objects are process globals shared by every test in the session, so
every assertion is on a difference between two scrapes of the real /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from buffer import keys
from stores.blobs import LocalBlobStore
from ingest.worker import Ingester
from metrics import record_validation, set_pair_progress, set_window_close
from gateway.observe import SNAPSHOT
from metrics.server import MetricsServer
from metrics.registry import clear_pair_progress
from tests.conftest import OCTET, TUS, Gateway, buffer_empty, create, make_settings, patch, wait_for, wait_stored

PATCH_ROUTE = "/files/{upload_id}"


def uncached(gw: Gateway) -> Gateway:
    """Read Redis on every scrape (the snapshot is normally reused for a second)."""
    gw.app[SNAPSHOT].max_age = 0
    return gw


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, frozenset], float]:
    async with http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def total(m: dict, name: str, **labels) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= ls)


async def test_metrics_follow_an_upload(gateway, http, r, settings):
    uncached(gateway)
    m0 = await scrape(http, gateway.url + "/metrics")
    assert value(m0, "unggah_redis_up") == 1
    data = bytes(range(256)) * 400  # 102400 bytes
    url = await create(http, gateway, len(data))
    upload_id = url.rsplit("/", 1)[1]

    assert (await patch(http, url, 0, data[:60000])).status == 204
    assert (await patch(http, url, 0, b"x" * 10)).status == 409  # offset-mismatch
    async with http.head(gateway.files + "1-" + "0" * 32, headers=TUS) as resp:
        assert resp.status == 404  # upload-not-found
    m1 = await scrape(http, gateway.url + "/metrics")

    d = lambda name, **kw: total(m1, name, **kw) - total(m0, name, **kw)  # noqa: E731
    assert d("unggah_uploads_created_total") == 1
    assert d("unggah_appends_accepted_total") == 1
    assert d("unggah_appends_rejected_total", reason="offset-mismatch") == 1
    assert d("unggah_refusals_total", reason="offset-mismatch", code="409") == 1
    assert d("unggah_refusals_total", reason="upload-not-found", code="404") == 1
    assert d("unggah_received_bytes_total") == 60000
    assert d("unggah_http_requests_total", method="PATCH", route=PATCH_ROUTE, code="204") == 1
    assert d("unggah_http_requests_total", method="POST", route="/files/", code="201") == 1
    assert d("unggah_http_request_duration_seconds_count", method="PATCH", route=PATCH_ROUTE) == 2
    assert d("unggah_buffer_append_duration_seconds_count") >= 1
    # Buffer gauges, straight from Redis: the bytes and the entry wait in one partition.
    p = str(keys.partition_of(upload_id, settings.partitions))
    assert value(m1, "unggah_buffer_bytes", partition=p) == 60000
    assert total(m1, "unggah_buffer_bytes") == 60000
    assert total(m1, "unggah_ingest_backlog_entries") == 1
    assert value(m1, "unggah_buffer_budget_bytes") == settings.buffer_budget
    assert value(m1, "unggah_redis_memory_used_bytes") > 0
    # Route templates only: the upload id appears in no label.
    assert all(upload_id not in v for _, ls in m1 for _, v in ls)
    # The gateway does not expose the ingesters' metrics, nor they the buffer's.
    assert not any(n.startswith("unggah_ingest_entries") for n, _ in m1)
    assert value(m1, "unggah_build_info", version="0.1.0", role="gateway") == 1

    assert (await patch(http, url, 60000, data[60000:])).status == 204
    server = await MetricsServer("127.0.0.1", 0).start()
    ing_url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        i0 = await scrape(http, ing_url)
        client = r.__class__.from_url(settings.redis_url)
        ing = Ingester(settings, "test.metrics-0", client, LocalBlobStore(settings.blob_path))
        task = asyncio.create_task(ing.run())
        try:
            st = await wait_stored(http, url)
            assert st["state"] == "stored"
            await wait_for(lambda: buffer_empty(r))
        finally:
            ing.stopping.set()
            await asyncio.wait_for(task, 30)
            await client.aclose()
        i1 = await scrape(http, ing_url)
    finally:
        await server.stop()
    di = lambda name, **kw: total(i1, name, **kw) - total(i0, name, **kw)  # noqa: E731
    assert di("unggah_uploads_stored_total") == 1
    assert di("unggah_ingest_bytes_total") == len(data)
    assert di("unggah_ingest_entries_total", kind="data") == 2
    assert di("unggah_ingest_entries_total", kind="fin") == 1
    assert di("unggah_ingest_batch_duration_seconds_count") >= 1
    assert value(i1, "unggah_build_info", version="0.1.0", role="ingest") == 1
    assert not any(n.startswith("unggah_buffer_bytes") for n, _ in i1)

    m2 = await scrape(http, gateway.url + "/metrics")
    assert total(m2, "unggah_ingest_backlog_entries") == 0
    assert total(m2, "unggah_ingest_pending_entries") == 0
    assert total(m2, "unggah_buffer_bytes") == 0


async def test_pending_and_dead_letters_come_from_redis(gateway, http, r, settings):
    uncached(gateway)
    url = await create(http, gateway, 3 * 4096)
    upload_id = url.rsplit("/", 1)[1]
    p = keys.partition_of(upload_id, settings.partitions)
    for i in range(3):
        assert (await patch(http, url, i * 4096, b"a" * 4096)).status == 204
    # A consumer takes two entries and holds them: they are pending, all three are backlog.
    await r.xgroup_create(keys.stream(p), keys.GROUP, id="0", mkstream=True)
    await r.xreadgroup(keys.GROUP, "test.holder", {keys.stream(p): ">"}, count=2)
    await r.xadd(keys.dead(p), {"k": "d", "u": upload_id, "reason": "test"})
    audit_before = await r.xlen(keys.audit(p))  # the creation and the appends wrote theirs
    m = await scrape(http, gateway.url + "/metrics")
    assert value(m, "unggah_ingest_backlog_entries", partition=str(p)) == 3
    assert value(m, "unggah_ingest_pending_entries", partition=str(p)) == 2
    assert 0 <= value(m, "unggah_ingest_oldest_pending_age_seconds", partition=str(p)) < 60
    assert value(m, "unggah_dead_letter_entries", partition=str(p)) == 1
    assert total(m, "unggah_dead_letter_entries") == 1
    assert value(m, "unggah_audit_backlog_entries", partition=str(p)) == audit_before >= 4


async def test_redis_down_buffer_gauges_absent_and_refusal_logged_once(tmp_path, http, caplog):
    from unggah.processes import free_port
    settings = make_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    gw = await Gateway(settings).start()
    try:
        with caplog.at_level(logging.INFO, logger="unggah.gateway"):
            async with http.post(gw.files, headers={**TUS, "Upload-Length": "10", "X-Request-Id": "rid-down"}) as resp:
                assert resp.status == 503
                assert resp.headers["Unggah-Reason"] == "buffer-unavailable"
        m = await scrape(http, gw.url + "/metrics")
    finally:
        await gw.stop()
    assert value(m, "unggah_redis_up") == 0
    assert not any(n == "unggah_buffer_bytes" for n, _ in m)
    mine = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "rid-down"]
    assert len(mine) == 1
    assert mine[0].levelno == logging.WARNING and mine[0].reason == "buffer-unavailable"
    assert "ConnectionError" in mine[0].error


async def test_every_refusal_logged_once_with_reason(gateway, http, caplog):
    url = await create(http, gateway, 100)
    cases = [
        ("PATCH", url, {**OCTET, "Upload-Offset": "5"}, b"x", 409, "offset-mismatch"),
        ("PATCH", url, {**TUS, "Content-Type": "text/plain", "Upload-Offset": "0"}, b"x", 415, "unsupported-media-type"),
        ("HEAD", gateway.files + "nope", TUS, None, 404, "upload-not-found"),
        ("GET", gateway.url + "/no/such/route", {}, None, 404, "not-found"),
        ("POST", gateway.files, {"Tus-Resumable": "0.2.2"}, None, 412, "unsupported-tus-version"),
        ("PATCH", url, {**OCTET, "Upload-Offset": "0", "Upload-Checksum": "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA="},
         b"abc", 460, "checksum-mismatch"),
    ]
    with caplog.at_level(logging.INFO, logger="unggah.gateway"):
        for i, (method, u, h, body, code, reason) in enumerate(cases):
            async with http.request(method, u, headers={**h, "X-Request-Id": f"rid-{i}"}, data=body) as resp:
                assert resp.status == code, (reason, await resp.text())
                assert resp.headers["Unggah-Reason"] == reason
                assert resp.headers["X-Request-Id"] == f"rid-{i}"
        async with http.patch(url, headers={**OCTET, "Upload-Offset": "0", "X-Request-Id": "rid-ok"},
                              data=b"y" * 10) as resp:
            assert resp.status == 204
    for i, (*_, code, reason) in enumerate(cases):
        mine = [rec for rec in caplog.records if getattr(rec, "request_id", None) == f"rid-{i}"]
        assert len(mine) == 1, (reason, [rec.getMessage() for rec in mine])
        assert mine[0].reason == reason and mine[0].status == code and mine[0].levelno == logging.INFO
    assert not [rec for rec in caplog.records if getattr(rec, "request_id", None) == "rid-ok"]


async def test_setters_for_windows_pairs_and_validation(gateway, http):
    set_window_close(time.time() + 3600)
    set_pair_progress("pasangan-a", 900, 1000, units_meeting=3, min_spread=5)
    record_validation("TMS", "NIK_FORMAT", rows=7)
    record_validation("MS", rows=2)
    try:
        m = await scrape(http, gateway.url + "/metrics")
        assert 3500 < value(m, "unggah_window_close_seconds") <= 3600
        assert value(m, "unggah_pair_supporters", tenant="pasangan-a") == 900
        assert value(m, "unggah_pair_min_support", tenant="pasangan-a") == 1000
        assert value(m, "unggah_pair_min_spread", tenant="pasangan-a") == 5
        assert value(m, "unggah_validation_rows_total", status="TMS", reason="NIK_FORMAT") >= 7
        assert value(m, "unggah_validation_rows_total", status="MS", reason="none") >= 2
    finally:
        set_window_close(None)
        clear_pair_progress()
    m = await scrape(http, gateway.url + "/metrics")
    assert not any(n.startswith("unggah_window_") or n.startswith("unggah_pair_") for n, _ in m)


async def test_event_loop_lag_is_sampled_and_sees_a_blocked_loop(gateway, http):
    """Ten samples a second while the gateway runs; a loop held busy for 160 ms (longer than a
    sample's 100 ms sleep, so it makes one late by 60 ms or more) shows up above 50 ms in the
    histogram: the figure that says a gateway is CPU-bound."""
    m0 = await scrape(http, gateway.url + "/metrics")
    await asyncio.sleep(0.35)
    time.sleep(0.16)  # the in-process gateway shares this loop: block it, as a saturated one would be
    await asyncio.sleep(0.15)
    m1 = await scrape(http, gateway.url + "/metrics")
    count = "unggah_event_loop_lag_seconds_count"
    assert value(m1, count) - value(m0, count) >= 3
    slow = 'unggah_event_loop_lag_seconds_bucket'
    over_50ms = (value(m1, count) - value(m1, slow, le="0.05")) - (value(m0, count) - value(m0, slow, le="0.05"))
    assert over_50ms >= 1, "the 160 ms block was not seen"


async def test_the_gate_is_scraped_idle_and_under_contention(tmp_path, valkey, http):
    """/metrics shows the gate: slots, read slots, pieces in progress, reading and waiting. One
    slot and six uploaders at once: never more than one piece in progress, and some seen waiting."""
    gw = await Gateway(make_settings(tmp_path, valkey.url, append_slots=1)).start()
    running = {"on": True}
    uploads: list[asyncio.Task] = []

    async def uploader():
        url = await create(http, gw, None, **{"Upload-Defer-Length": "1"})
        offset = 0
        while running["on"]:
            resp = await patch(http, url, offset, b"x" * 262144)
            offset = int(resp.headers.get("Upload-Offset", offset))

    try:
        m = await scrape(http, gw.url + "/metrics")
        assert (value(m, "unggah_append_slots"), value(m, "unggah_append_in_progress"),
                value(m, "unggah_append_waiting")) == (1, 0, 0)
        # append_read_slots (2 by default) takes effect up to append_slots.
        assert (value(m, "unggah_append_read_slots"), value(m, "unggah_append_reading")) == (1, 0)
        uploads += [asyncio.create_task(uploader()) for _ in range(6)]
        seen_waiting = 0.0
        for _ in range(100):
            m = await scrape(http, gw.url + "/metrics")
            assert value(m, "unggah_append_in_progress") <= 1
            assert value(m, "unggah_append_reading") <= value(m, "unggah_append_in_progress")
            seen_waiting = max(seen_waiting, value(m, "unggah_append_waiting"))
            if seen_waiting >= 1:
                break
        assert seen_waiting >= 1, "six uploaders and one slot, yet no piece was ever seen waiting"
    finally:
        running["on"] = False
        await asyncio.gather(*uploads, return_exceptions=True)
        await gw.stop()


async def test_garbage_collections_are_timed_by_generation_and_the_hook_goes_with_the_app(tmp_path, valkey, http):
    """Every collection's pause is in unggah_gc_pause_seconds by generation (long ones hold the
    event loop: they show in its lag and in the time to answer a refusal); a stopped gateway
    leaves nothing in gc.callbacks."""
    import gc
    before = list(gc.callbacks)
    gw = await Gateway(make_settings(tmp_path, valkey.url)).start()
    try:
        assert len(gc.callbacks) == len(before) + 1
        m0 = await scrape(http, gw.url + "/metrics")
        for generation in (0, 1, 2):
            gc.collect(generation)
        await asyncio.sleep(0.25)  # the pauses are recorded every 100 ms
        m1 = await scrape(http, gw.url + "/metrics")
        for generation in ("0", "1", "2"):
            grew = (value(m1, "unggah_gc_pause_seconds_count", generation=generation)
                    - value(m0, "unggah_gc_pause_seconds_count", generation=generation))
            assert grew >= 1, f"generation {generation}'s collection was not timed"
        assert value(m1, "unggah_gc_pause_seconds_sum", generation="2") > 0
    finally:
        await gw.stop()
    assert gc.callbacks == before
