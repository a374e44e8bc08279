"""Each store is reached only through its Protocol: the ingester and the validator through
BlobStore, the gateway through ResultsReader. Handed the in-memory implementations of
tests/memory_stores.py, with no blob directory or results file behind them, they still work:
nothing reaches past the seam. Valkey is real."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

from buffer.connection import connect
from buffer.messages import CompletedEvent
from dukungan.election import example_toml, load_election
from dukungan.generate import generate, write_csv
from dukungan.region import synthetic_code_list_text
from dukungan.rules import prepare
from ingest.worker import Ingester
from stores.results import ACCEPTED, REJECTED, FileRecord, ScanRecord, SQLiteResults, StoredRow
from validator.worker import Validator
from tests.conftest import OCTET, Gateway, make_settings, wait_stored
from tests.memory_stores import MemoryBlobStore, MemoryResults

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


async def test_the_ingester_stores_byte_identical_files_in_any_blob_store(settings, gateway, http):
    blobs = MemoryBlobStore()
    client = connect(settings.redis_url, retry=False)
    ing = Ingester(settings, "test.seam-0", client, blobs)
    task = asyncio.create_task(ing.run())
    try:
        data = os.urandom(300_000)
        h = dict(OCTET, **{"Upload-Length": str(len(data))})
        async with http.post(gateway.files, data=data, headers=h) as resp:
            assert resp.status == 201, await resp.text()
            url = resp.headers["Location"]
        st = await wait_stored(http, url)
        upload_id = url.rsplit("/", 1)[1]
        assert st["state"] == "stored" and st["sha256"] == hashlib.sha256(data).hexdigest()
        with blobs.open_stored(upload_id) as f:
            assert f.read() == data
        assert not (settings.blob_path / "stored" / upload_id).exists(), "nothing went to the blob directory"
    finally:
        ing.stopping.set()
        await asyncio.wait_for(task, 30)
        await client.aclose()


async def test_the_validator_judges_files_read_from_any_blob_store(tmp_path, valkey, r):
    (tmp_path / "codes.csv").write_text(synthetic_code_list_text(), encoding="utf-8")
    (tmp_path / "election.toml").write_text(example_toml(), encoding="utf-8")
    s = make_settings(tmp_path, valkey.url, election_file=str(tmp_path / "election.toml"))
    election = load_election(s.election_file)
    ctx = prepare(election)
    g = generate(ctx, 30, seed=7, traps=False)
    write_csv(tmp_path / "list.csv", g.rows)
    blobs = MemoryBlobStore()
    list_id, scan_id, bad_id = "0-" + "a" * 32, "0-" + "b" * 32, "0-" + "c" * 32
    blobs.stored[list_id] = (tmp_path / "list.csv").read_bytes()
    nik = g.rows[0][1]
    blobs.stored[scan_id] = JPEG
    blobs.stored[bad_id] = b"PNG, not a scan"
    client = connect(s.redis_url, retry=False)
    v = Validator(s, "test.seam-v", client, SQLiteResults(s.results_path), blobs, election, ctx)
    try:
        v.process(CompletedEvent(u=list_id, tenant="t", state="stored", length=len(blobs.stored[list_id]),
                                 metadata=f"filename {b64('daftar.csv')}"), None)
        v.process(CompletedEvent(u=scan_id, tenant="t", state="stored", length=len(JPEG),
                                 metadata=f"filename {b64(nik + '_ktp.jpg')}"), None)
        v.process(CompletedEvent(u=bad_id, tenant="t", state="stored", length=15,
                                 metadata=f"filename {b64(nik + '_pernyataan.pdf')}"), None)
        f = v.results.file(list_id)
        assert f.status == ACCEPTED and f.rows == 30 and v.results.count_rows(list_id) == 30
        assert v.results.scan(scan_id).ok and v.results.scan(scan_id).nik == nik
        assert v.results.file(bad_id).status == REJECTED
    finally:
        v.results.close()
        await client.aclose()


async def test_the_gateway_serves_progress_and_verdicts_from_any_results_reader(tmp_path, valkey, r, http):
    results = MemoryResults()
    rows = [StoredRow(1, "0-l", 2, "1971010101010001", "SATU", "19.71.01.1001", "MS", (), "f1", "penyerahan", None),
            StoredRow(2, "0-l", 3, "1971010101010002", "DUA", "19.71.01.1001", "TMS", ("NIK_FORMAT",), "f2",
                      "penyerahan", None)]
    results.add(FileRecord(upload_id="0-l", tenant="public", kind="list", filename="daftar.csv", status=ACCEPTED,
                           rows=2, validated_at=1_700_000_000_000), rows)
    results.add(FileRecord(upload_id="0-k", tenant="public", kind="ktp", filename="x_ktp.jpg", status=ACCEPTED),
                scan=ScanRecord(nik="1971010101010001", kind="ktp", ok=True, size=204))
    results.add(FileRecord(upload_id="0-r", tenant="public", kind="list", filename="lama.xlsx", status=REJECTED,
                           message="TEMPLATE_INVALID: ..."))
    results.snapshots["public"] = {"min_support": 10, "ms": 1, "ms_pending_external": 0, "bms": 0, "tms": 1,
                                   "shortfall": 9, "correction_required": 18, "min_spread": 1, "units_meeting": 1,
                                   "units": 1, "ms_per_unit": {"19.71.01": 1}, "spread_shortfall": 0,
                                   "bms_by_reason": {}, "tms_by_reason": {"NIK_FORMAT": 1}, "flags_by_reason": {}}
    s = make_settings(tmp_path, valkey.url)
    gw = await Gateway(s, results=results).start()
    try:
        assert not s.results_path.exists(), "no results file: everything below comes from the reader"
        async with http.get(gw.url + "/files/0-l/verdicts") as resp:
            body = await resp.json()
        assert resp.status == 200 and body["rows"] == 2 and body["counts"] == {"MS": 1, "BMS": 0, "TMS": 1}
        async with http.get(gw.url + "/files/0-k/verdicts") as resp:
            assert (await resp.json())["scan"]["ok"] is True
        async with http.get(gw.url + "/progress") as resp:
            p = await resp.json()
        assert p["ms"] == 1 and p["minimum"] == 10 and p["uploads"] == {"lists": 1, "scans": 1, "lists_rejected": 1}
        assert [x["id"] for x in p["lists_not_counted"]] == ["0-r"]
        async with http.get(gw.url + "/verdicts.csv?upload=0-l") as resp:
            text = (await resp.read()).decode("utf-8-sig")
        assert resp.status == 200 and "1971010101010002" in text and "NIK_FORMAT" in text
    finally:
        await gw.stop()
