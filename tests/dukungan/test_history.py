"""The history rule: nothing is overwritten; a later row is a duplicate, a correction or a new row."""

from __future__ import annotations

import pytest

from dukungan.generate import generate, write_csv
from dukungan.history import HistoryRow, apply_history, history_rows, standing
from dukungan.preflight import validate_file
from dukungan.scans import ScanSets
from dukungan.rules import fingerprint, fingerprints
from dukungan.template import HEADER, Table


@pytest.fixture()
def first_upload(ctx, tmp_path):
    g = generate(ctx, 6, seed=21, traps=False)
    p = tmp_path / "u1.csv"
    write_csv(p, g.rows)
    ktp = set(g.scans.ktp) - {g.rows[1][1]}  # row 1 lacks its KTP scan: BMS
    v = validate_file(p, ctx, scans=ScanSets(frozenset(ktp), g.scans.statement))
    assert v.status[:3] == ["MS", "BMS", "MS"]
    return g, v, history_rows(v, "upload-1", "penyerahan")


def _second(ctx, tmp_path, rows, scans):
    p = tmp_path / "u2.csv"
    write_csv(p, rows)
    return validate_file(p, ctx, scans=scans)


def test_identical_row_after_counted_is_dup_internal(ctx, tmp_path, first_upload):
    g, _, hist = first_upload
    v2 = _second(ctx, tmp_path, [g.rows[0]], g.scans)
    res = apply_history(v2, standing(hist), "submission")
    assert res.verdicts.reasons[0] == ("DUP_INTERNAL",) and res.verdicts.status[0] == "TMS"
    assert res.resolutions[0].action == "duplicate" and res.resolutions[0].earlier.upload_id == "upload-1"
    assert res.superseded == []
    assert v2.reasons[0] == ()  # input verdicts untouched: pure


def test_changed_row_after_counted_is_also_potential(ctx, tmp_path, first_upload):
    g, _, hist = first_upload
    row = list(g.rows[0])
    row[HEADER.index("NAMA")] += " BIN FULAN"
    res = apply_history(_second(ctx, tmp_path, [row], g.scans), standing(hist))
    assert res.verdicts.reasons[0] == ("DUP_INTERNAL", "DUP_POTENTIAL")


@pytest.mark.parametrize("round_kind,action", [("correction", "correction"), ("submission", "resubmission")])
def test_row_after_bms_supersedes_it(ctx, tmp_path, first_upload, round_kind, action):
    g, _, hist = first_upload
    # Same data; the KTP scan is attached now: the correction KPU asks for.
    res = apply_history(_second(ctx, tmp_path, [g.rows[1]], g.scans), standing(hist), round_kind)
    assert res.verdicts.status[0] == "MS" and res.verdicts.reasons[0] == ()
    assert res.resolutions[0].action == action
    (earlier, new_index), = res.superseded
    assert earlier.row_no == 3 and earlier.status == "BMS" and new_index == 0


def test_row_after_tms_is_judged_as_new_and_flagged_if_changed(ctx, tmp_path, first_upload):
    g, _, _ = first_upload
    tms = HistoryRow(g.rows[2][1], "TMS", "upload-0", 9, "something else")
    res = apply_history(_second(ctx, tmp_path, [g.rows[2]], g.scans), standing([tms]))
    assert res.verdicts.status[0] == "MS" and res.verdicts.reasons[0] == ("DUP_POTENTIAL",)
    assert res.resolutions[0].action == "after_tms"


def test_standing_prefers_the_counted_row():
    a = HistoryRow("1", "MS", "u1", 2, "x")
    b = HistoryRow("1", "TMS", "u2", 2, "x")  # the later duplicate of it
    c = HistoryRow("2", "BMS", "u1", 3, "y")
    d = HistoryRow("2", "BMS", "u2", 3, "y2")
    s = standing([a, b, c, d])
    assert s["1"] is a and s["2"] is d


def test_new_nik_is_untouched(ctx, tmp_path, first_upload):
    g, _, hist = first_upload
    v2 = _second(ctx, tmp_path, [g.rows[4]], g.scans)
    res = apply_history(v2, {}, "submission")
    assert res.verdicts.status == v2.status and res.resolutions == []


ODD_CELLS = ["", " ", "\t", "a\u00a0 b", "  Siti   Aminah ", "stra\u00dfe", "x\x00y", "\u2003lead", "tail\u3000",
             "\x1c", "laki-laki", " p ", "LK", "007", "0", "27815", "31-12-1980", "1980-12-31", "1980/12/31"]


def test_fingerprints_of_a_whole_table_equal_each_rows_fingerprint(ctx, tmp_path):
    """The column-at-once fingerprints (what the validator stores) are the per-row reference's,
    for generated rows and for cells with odd white space, NUL, case and dates."""
    g = generate(ctx, 300, seed=5)
    rows = [list(r) for r in g.rows]
    for k, cell in enumerate(ODD_CELLS):
        for c in range(1, len(HEADER)):
            rows[k][c] = cell if (c + k) % 3 == 0 else rows[k][c]
    t = Table("csv", list(range(2, len(rows) + 2)), *[[r[c] for r in rows] for c in range(len(HEADER))])
    assert fingerprints(t) == [fingerprint(t, i) for i in range(len(rows))]
    nul = Table("csv", [2, 3], *[["x\x00y", " a "] for _ in HEADER])  # a NUL in a cell: the per-cell way
    assert fingerprints(nul) == [fingerprint(nul, 0), fingerprint(nul, 1)]
