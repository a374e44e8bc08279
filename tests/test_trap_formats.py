"""Our own trap lists (tests/traps.py), in every format a team sends, judged identically by
`unggah check` and by the server, and the same way in every format (issue 19, item 7).

One stack for the module: Valkey (the session's), the gateway, an ingester and the validator. Each
format's trap list is sent by its own pair (the lists share no NIK, so no pair's rows touch
another's), its scans first; then every structural trap. `unggah check` is the command a team runs,
called through its main function with the same election file and scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from buffer.connection import connect
from buffer.tenants import TenantStore
from dukungan.election import load_election
from dukungan.reasons import ROW_CODES
from dukungan.region import synthetic_code_list_text
from dukungan.rules import prepare
from stores.blobs import LocalBlobStore
from validator.worker import Validator
from ingest.worker import Ingester
from tests.conftest import Gateway, make_settings
from tests.test_validation_pipeline import ELECTION, auth, upload, upload_many, wait_validated
from tests.traps import (CELL_TYPE_CODES, FORMATS, NOT_FROM_ONE_LIST, STRUCTURAL, TrapSet, build_traps,
                         scan_files, write_trap_set)
from commands.cli import main as unggah_main


FMTS = list(FORMATS)
TRAPS = list(STRUCTURAL)


class Judgement:
    """What one judge made of one file: a rejection (message, problems) or every row's verdict."""

    def __init__(self, rejected: bool, message_id: str = "", message_en: str = "", message: str = "",
                 problems: list[str] | None = None, export: bytes = b"") -> None:
        self.rejected = rejected
        self.message_id, self.message_en = message_id, message_en
        self.message = message  # as the server stores it: "TEMPLATE_INVALID: <id> / <en>"
        self.problems = problems or []
        self.export = export
        lines = list(csv.reader(io.StringIO(export.decode("utf-8-sig")))) if export else []
        self.records = lines[1:]  # BARIS, NIK, NAMA, KODE_DESA, STATUS, KODE_ALASAN, ALASAN, REASON

    @property
    def rows(self) -> list[tuple[int, str, tuple[str, ...]]]:
        """(row number, status, reason codes) per row."""
        return [(int(r[0]), r[4], tuple(r[5].split(";")) if r[5] else ()) for r in self.records]


@pytest.fixture(scope="module")
def election_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("election")
    (d / "codes.csv").write_text(synthetic_code_list_text(), encoding="utf-8")
    (d / "election.toml").write_text(ELECTION, encoding="utf-8")
    return d / "election.toml"


@pytest.fixture(scope="module")
def trap_sets(tmp_path_factory, election_file) -> dict[str, TrapSet]:
    ctx = prepare(load_election(election_file))
    root = tmp_path_factory.mktemp("traps")
    sets = {fmt: write_trap_set(root / f"f{i}", ctx, fmt, seed=101 + i) for i, fmt in enumerate(FMTS)}
    niks = [{r.cells[1] for r in s.traps.rows} for s in sets.values()]
    assert all(not (a & b) for i, a in enumerate(niks) for b in niks[i + 1:]), "pairs must not share a NIK"
    return sets


def unggah_check(path: Path, election_file: Path, scans: Path, out: Path) -> tuple[int, Judgement]:
    """`unggah check FILE --election E --scans DIR --json --export OUT`, as a team runs it."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = unggah_main(["check", str(path), "--election", str(election_file), "--scans", str(scans),
                            "--json", "--export", str(out)])
    report = json.loads(stdout.getvalue())
    err = report["template_error"]
    if report["rejected"]:
        assert not out.exists()
        return code, Judgement(True, err["message_id"], err["message_en"],
                               f"TEMPLATE_INVALID: {err['message_id']} / {err['message_en']}", err["problems"])
    return code, Judgement(False, export=out.read_bytes())


@pytest.fixture(scope="module")
def checked(trap_sets, election_file, tmp_path_factory) -> dict[str, dict[str, tuple[int, Judgement]]]:
    """format -> file ("list" or a STRUCTURAL name) -> (exit status, judgement)."""
    out = tmp_path_factory.mktemp("exports")
    got: dict[str, dict[str, tuple[int, Judgement]]] = {}
    for i, (fmt, s) in enumerate(trap_sets.items()):
        files = {"list": s.list_path, **s.structural}
        got[fmt] = {name: unggah_check(p, election_file, s.scan_dir, out / f"{i}-{k}.csv")
                    for k, (name, p) in enumerate(files.items())}
    return got


async def _serve(valkey_url: str, state: Path, election_file: Path,
                 sets: dict[str, TrapSet]) -> dict[str, dict[str, Judgement]]:
    settings = make_settings(state, valkey_url, auth="tokens", election_file=str(election_file))
    r = aioredis.Redis.from_url(valkey_url)
    await r.flushall()
    store = TenantStore(r)
    tokens = {}
    for i, fmt in enumerate(sets):
        await store.add(f"pair-{i + 1}", f"Paslon {i + 1}")
        tokens[fmt] = (await store.issue(f"pair-{i + 1}", "operator"))[0]
    await r.aclose()
    gw = await Gateway(settings).start()
    clients = [connect(settings.redis_url, retry=False) for _ in range(2)]
    ingester = Ingester(settings, "traps.ingest-0", clients[0], LocalBlobStore(settings.blob_path))
    validator = Validator.for_settings(settings, "traps.validate-0", clients[1])
    tasks = [asyncio.create_task(ingester.run()), asyncio.create_task(validator.run())]
    got: dict[str, dict[str, Judgement]] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            # Scans first, so the lists are judged with them from the start.
            sent = await asyncio.gather(*(upload_many(http, gw, tokens[f], scan_files(s.traps.scans))
                                          for f, s in sets.items()))
            for f, ids in zip(sets, sent):
                scans = await wait_validated(http, gw, tokens[f], ids)
                assert {b["status"] for b in scans.values()} == {"accepted"}, f
            for fmt, s in sets.items():
                files = {"list": s.list_path, **s.structural}
                ids = await upload_many(http, gw, tokens[fmt], [(p.name, p.read_bytes()) for p in files.values()])
                bodies = await wait_validated(http, gw, tokens[fmt], ids)
                got[fmt] = {}
                for name, u in zip(files, ids):
                    body = bodies[u]
                    if body["status"] == "rejected":
                        got[fmt][name] = Judgement(True, message=body["message"], problems=body["problems"])
                        continue
                    assert body["status"] == "accepted", body
                    async with http.get(f"{gw.url}/verdicts.csv", params={"upload": u},
                                        headers=auth(tokens[fmt])) as resp:
                        assert resp.status == 200, await resp.text()
                        got[fmt][name] = Judgement(False, export=await resp.read())
    finally:
        validator.stopping.set()
        ingester.stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        validator.results.close()
        for c in clients:
            await c.aclose()
        await gw.stop()
    return got


@pytest.fixture(scope="module")
def served(valkey, tmp_path_factory, election_file, trap_sets) -> dict[str, dict[str, Judgement]]:
    """format -> file -> what the server made of it, read back over HTTP as a team reads it."""
    return asyncio.run(_serve(valkey.url, tmp_path_factory.mktemp("server"), election_file, trap_sets))


# ---- the trap list itself


def test_the_trap_list_has_a_trap_for_every_reason_one_list_can_carry(election_file):
    traps = build_traps(prepare(load_election(election_file)))
    carried = {c for r in traps.rows for c in r.reasons}
    assert carried == set(ROW_CODES) - NOT_FROM_ONE_LIST, "a new reason code needs its trap in tests/traps.py"
    assert sum(1 for r in traps.rows if not r.reasons) >= 4, "and good rows, which must stay good"
    assert NOT_FROM_ONE_LIST <= set(ROW_CODES)


# ---- (a) unggah check, against the expectations written into the trap list


@pytest.mark.parametrize("fmt", FMTS)
def test_unggah_check_gives_every_trap_row_its_verdict_and_accepts_the_list(fmt, checked, trap_sets):
    code, judged = checked[fmt]["list"]
    assert code == 0 and not judged.rejected
    want = trap_sets[fmt].expected_rows()
    names = [r.name for r in trap_sets[fmt].traps.rows]
    wrong = [(n, g, w) for n, g, w in zip(names, judged.rows, want) if g != w]
    assert wrong == [] and len(judged.rows) == len(want)


@pytest.mark.parametrize("trap", TRAPS)
@pytest.mark.parametrize("fmt", FMTS)
def test_unggah_check_rejects_every_structural_trap_with_exit_status_1(fmt, trap, checked):
    code, judged = checked[fmt][trap]
    assert judged.rejected and code == 1
    assert judged.message_id and judged.message_en


# ---- (b) the server, against unggah check


@pytest.mark.parametrize("fmt", FMTS)
def test_the_server_gives_every_row_the_verdict_unggah_check_gives(fmt, checked, served):
    _, local = checked[fmt]["list"]
    remote = served[fmt]["list"]
    assert not remote.rejected
    diff = [(a, b) for a, b in zip(local.records, remote.records) if a != b]
    assert diff == [] and len(local.records) == len(remote.records)
    assert remote.export == local.export  # the export too, byte for byte


@pytest.mark.parametrize("trap", TRAPS)
@pytest.mark.parametrize("fmt", FMTS)
def test_the_server_rejects_every_structural_trap_with_the_message_unggah_check_gives(fmt, trap, checked, served):
    _, local = checked[fmt][trap]
    remote = served[fmt][trap]
    assert remote.rejected and local.rejected
    assert remote.message == local.message
    assert remote.problems == local.problems


@pytest.mark.parametrize("trap", TRAPS)
@pytest.mark.parametrize("fmt", FMTS)
def test_a_structural_rejection_names_the_column_and_says_shifted_when_one_moved(fmt, trap, checked):
    _, judged = checked[fmt][trap]
    t = STRUCTURAL[trap]
    missing = ([f"en: {s}" for s in t.says if s not in judged.message_en]
               + [f"id: {s}" for s in t.says_id if s not in judged.message_id])
    assert missing == [], judged.message


# ---- (c) every format, against the others


def _without_cell_types(rows):
    return [(n, status, tuple(c for c in codes if c not in CELL_TYPE_CODES)) for n, status, codes in rows]


@pytest.mark.parametrize("fmt", FMTS[1:])
def test_every_format_gives_the_rows_the_verdicts_the_csv_gives(fmt, checked, served, trap_sets):
    """Same row numbers, statuses and reasons; a format that keeps cell types (XLSX) also flags the
    date cell, exactly there, which a CSV (the date as the sheet showed it) cannot carry."""
    base = checked[FMTS[0]]["list"][1].rows
    for judged in (checked[fmt]["list"][1], served[fmt]["list"]):
        assert _without_cell_types(judged.rows) == _without_cell_types(base)
        flagged = [(n, c) for n, _, codes in judged.rows for c in codes if c in CELL_TYPE_CODES]
        names = [r.name for r in trap_sets[fmt].traps.rows]
        assert [(names[n - 2], c) for n, c in flagged] == [
            ("birth date a date cell, converted and flagged", "DATE_FROM_SPREADSHEET")]
    assert not any(c in CELL_TYPE_CODES for _, _, codes in base for c in codes)


@pytest.mark.parametrize("trap", TRAPS)
def test_every_format_rejects_the_same_structural_traps_for_the_same_reason(trap, checked, served):
    """A header problem reads word for word the same in every format. A problem in the data names a
    CSV line but a sheet cell, and an unreadable CSV is not an unreadable XLSX: the same between the
    two XLSX formats."""
    judged = {(f, judge): j for f in FMTS for judge, j in (("check", checked[f][trap][1]), ("server", served[f][trap]))}
    assert all(j.rejected for j in judged.values())
    same = judged if trap not in ("unreadable file", "cells shifted right in one row") else {
        k: j for k, j in judged.items() if FORMATS[k[0]].typed_cells}
    assert len({j.message for j in same.values()}) == 1, {k: j.message for k, j in same.items()}
