"""Every time a person reads is ISO 8601 with an offset, never epoch milliseconds: /status (UTC),
/progress and a file's verdicts (the election's zone), and the commands that print times. The
integer stays beside it as `<name>_ms` for programs; the signed receipt keeps its integers."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buffer import keys
from client.cli import format_progress
from dukungan.election import load_election
from dukungan.rules import prepare
from dukungan.progress import tally
from stores.results import FileRecord, SQLiteResults
from validator.worker import progress_snapshot
from tests.conftest import Gateway, create, make_settings, patch, status, wait_stored
from tests.test_validation_pipeline import election_file  # noqa: F401  (a fixture: the same small election)
from commands import admin
from unggah import receipts
from unggah.auditlog import Chain, chain_path
from unggah.times import iso, stamped

# 2024-11-24 03:46:30.123 UTC, 10:46:30.123 in WIB.
MS = 1732419990123
UTC_ISO = "2024-11-24T03:46:30.123Z"
WIB_ISO = "2024-11-24T10:46:30.123+07:00"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_iso_is_exact_to_the_millisecond_in_utc_and_in_a_zone():
    assert iso(MS) == UTC_ISO
    assert iso(MS, load_zone("Asia/Jakarta")) == WIB_ISO
    assert iso(1732419990000) == "2024-11-24T03:46:30.000Z"
    assert iso(999) == "1970-01-01T00:00:00.999Z"  # no float rounding moves a millisecond
    assert stamped(created_at=MS, stored_at=None) == {"created_at": UTC_ISO, "created_at_ms": MS,
                                                      "stored_at": None, "stored_at_ms": None}


def load_zone(name: str) -> dt.tzinfo:
    import zoneinfo
    return zoneinfo.ZoneInfo(name)


# ---------------------------------------------------------------- /status

def _check_time(body: dict, name: str) -> int:
    """`name` is ISO 8601 in UTC and names the same instant as `name_ms`."""
    value, ms = body[name], body[name + "_ms"]
    assert isinstance(value, str) and ISO_Z.match(value), (name, value)
    assert isinstance(ms, int) and iso(ms) == value
    return ms


async def test_status_times_are_iso_utc_with_their_milliseconds_beside(gateway, ingester, http, r):
    url = await create(http, gateway, 3)
    st = await status(http, url)
    created = _check_time(st, "created_at")
    expires = _check_time(st, "expires_at")
    assert expires > created
    assert st["received_at"] is None and st["received_at_ms"] is None
    assert st["stored_at"] is None and st["stored_at_ms"] is None

    # The buffer lost acknowledged bytes: when that was found is readable too.
    upload_id = url.rsplit("/", 1)[1]
    await r.hset(keys.upload(int(upload_id.split("-")[0]), upload_id), mapping={"lost_acked": 2, "lost_at": MS})
    lost = (await status(http, url))["lost"]
    assert lost["found_at"] == UTC_ISO and lost["found_at_ms"] == MS
    await r.hset(keys.upload(int(upload_id.split("-")[0]), upload_id), mapping={"lost_acked": 0, "lost_at": 0})

    assert (await patch(http, url, 0, b"abc")).status == 204
    st = await wait_stored(http, url)
    assert st["state"] == "stored"
    received, stored = _check_time(st, "received_at"), _check_time(st, "stored_at")
    assert created <= received <= stored
    assert st["expires_at"] is None and st["expires_at_ms"] is None  # only while receiving
    # The receipt is signed over the integers: unchanged, and the same instants.
    payload = st["receipt"]["payload"]
    assert (payload["created_at"], payload["completed_at"], payload["stored_at"]) == (created, received, stored)


# ---------------------------------------------------------------- /progress, verdicts


@pytest.fixture
async def election_gateway(tmp_path, valkey, r, election_file):
    """A gateway with an election, and a results store holding what the validator writes."""
    settings = make_settings(tmp_path, valkey.url, election_file=str(election_file))
    results = SQLiteResults(settings.results_path)
    snap = progress_snapshot(prepare(load_election(election_file)), tally([], 5))
    snap["computed_at"] = MS
    with results.write() as w:
        w.save_progress("public", snap)
        w.add_file(FileRecord(upload_id="1-" + "a" * 32, tenant="public", kind="list", filename="daftar.csv",
                              status="rejected", message="TEMPLATE_INVALID", stored_at=MS - 1000, validated_at=MS))
    results.close()
    gw = await Gateway(settings).start()
    yield gw
    await gw.stop()


async def test_progress_times_are_iso_in_the_elections_zone(election_gateway, http):
    async with http.get(election_gateway.url + "/progress") as resp:
        assert resp.status == 200
        p = await resp.json()
    assert p["computed_at"] == WIB_ISO and p["computed_at_ms"] == MS
    w = p["window"]
    assert w["closes_at"] == "2099-12-31T23:59:59+07:00"
    assert w["closes_at_ms"] == int(dt.datetime.fromisoformat(w["closes_at"]).timestamp() * 1000)
    async with http.get(election_gateway.url + f"/files/1-{'a' * 32}/verdicts") as resp:
        assert resp.status == 200
        f = await resp.json()
    assert f["validated_at"] == WIB_ISO and f["validated_at_ms"] == MS


async def test_progress_times_without_an_election_are_utc(gateway, http, settings):
    results = SQLiteResults(settings.results_path)
    with results.write() as w:
        w.save_progress("public", {"min_support": 10, "ms": 1, "ms_pending_external": 0, "bms": 0, "tms": 0,
                                   "shortfall": 9, "correction_required": 0, "min_spread": 1, "units_meeting": 0,
                                   "units": 1, "ms_per_unit": {}, "spread_shortfall": 1, "bms_by_reason": {},
                                   "tms_by_reason": {}, "flags_by_reason": {}, "computed_at": MS})
    results.close()
    async with http.get(gateway.url + "/progress") as resp:
        p = await resp.json()
    assert p["computed_at"] == UTC_ISO and p["computed_at_ms"] == MS


# ---------------------------------------------------------------- command output

def test_unggah_status_prints_times_readably_whatever_the_server_sends():
    now = dt.datetime(2024, 5, 12, 13, 0, tzinfo=dt.timezone.utc)
    closes_ms = int(dt.datetime(2024, 5, 12, 16, 59, 59, tzinfo=dt.timezone.utc).timestamp() * 1000)
    # An older server: epoch milliseconds.
    text = format_progress({"tenant": "pair-a", "ms": 1, "computed_at": MS,
                            "window": {"name": "penyerahan", "closes_at": closes_ms}}, now=now)
    assert "closes 2024-05-12T16:59:59.000Z — 3 h 59 min left" in text
    assert f"counted at: {UTC_ISO}" in text
    assert str(closes_ms) not in text and str(MS) not in text
    # This server: ISO in the election's zone, shown as sent.
    text = format_progress({"tenant": "pair-a", "ms": 1, "computed_at": WIB_ISO, "computed_at_ms": MS,
                            "window": {"name": "penyerahan", "closes_at": "2024-05-12T23:59:59+07:00",
                                       "closes_at_ms": closes_ms}}, now=now)
    assert "closes 2024-05-12T23:59:59+07:00" in text and f"counted at: {WIB_ISO}" in text
    # Between rounds: when the next one opens.
    text = format_progress({"tenant": "pair-a", "ms": 1, "window": {
        "name": None, "open": False, "next_opens_at": "2024-06-01T08:00:00+07:00"}}, now=now)
    assert "CLOSED; the next opens 2024-06-01T08:00:00+07:00" in text


async def test_unggah_status_against_the_gateway_prints_when_progress_was_counted(election_gateway):
    from tests.test_client import run_cli
    code, out, err = await run_cli("status", "--server", election_gateway.url, "--token", "x")
    assert code == 0, err
    assert f"counted at: {WIB_ISO}" in out and str(MS) not in out


def test_receipt_verify_prints_iso_times_and_keeps_the_signed_integers(tmp_path, capsys):
    key = Ed25519PrivateKey.generate()
    payload = receipts.ReceiptPayload(tenant="paslon-01", upload_id="1-abc", filename="daftar.csv", size=10,
                                      sha256="ab" * 32, created_at=MS, completed_at=MS + 1000,
                                      stored_at=MS + 2000, window="penyerahan")
    receipt = receipts.sign(payload, key)
    (tmp_path / "r.json").write_bytes(receipts.canonical_receipt(receipt))
    (tmp_path / "key.pem").write_text(receipts.public_pem(key))
    args = argparse.Namespace(action="verify", file=str(tmp_path / "r.json"), public_key=str(tmp_path / "key.pem"))
    assert admin.receipt(make_settings(tmp_path, "redis://unused"), args) == 0
    out = capsys.readouterr().out
    assert f"created_at: {UTC_ISO}  ({MS} ms)" in out
    assert "completed_at: 2024-11-24T03:46:31.123Z" in out and "stored_at: 2024-11-24T03:46:32.123Z" in out
    # The receipt itself still carries (and is signed over) the integers.
    assert msgspec.json.decode((tmp_path / "r.json").read_bytes())["payload"]["created_at"] == MS


def test_audit_show_prints_event_times_as_iso(tmp_path, capsys):
    directory = tmp_path / "audit"
    Chain(chain_path(directory, 0)).append([(f"{MS}-0", {"ev": "create", "u": "0-abc", "t": "pair-a",
                                                         "at": str(MS)})])
    args = argparse.Namespace(action="show", dir=str(directory), tenant=None, upload=None)
    assert asyncio.run(admin.audit(make_settings(tmp_path, "redis://unused"), args)) == 0
    out = capsys.readouterr().out
    assert f"at={UTC_ISO}" in out and f"at={MS}" not in out and "ev=create" in out
