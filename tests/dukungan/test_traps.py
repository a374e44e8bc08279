"""Every reason code is produced by a generated trap and by nothing clean."""

from __future__ import annotations

import datetime as dt

import pytest

from dukungan.generate import generate, template_traps, write_csv, write_xlsx
from dukungan.preflight import validate_file
from dukungan.reasons import REASONS, ROW_CODES, verdict_of
from dukungan.template import HEADER, TemplateError

DATE_C = HEADER.index("TANGGAL_LAHIR")
XLSX_ONLY = {"DATE_FROM_SPREADSHEET"}  # a flag about a cell's type, which CSV does not have


@pytest.fixture(scope="module", params=["ctx", "synthetic_ctx"])
def judged(request, tmp_path_factory):
    ctx = request.getfixturevalue(request.param)
    g = generate(ctx, 600, seed=5, dup_rate=0.02)
    path = tmp_path_factory.mktemp("traps") / "list.csv"
    write_csv(path, g.rows)
    return g, validate_file(path, ctx, scans=g.scans, other_pairs=g.other_pairs), ctx


@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_code_from_its_trap_and_never_from_clean_rows(code, judged, tmp_path):
    g, v, ctx = judged
    if REASONS[code].status == "FILE":
        for name, (header, rows) in template_traps(g.rows[:50]).items():
            p = tmp_path / f"{name}.csv"
            write_csv(p, rows, header=header)
            with pytest.raises(TemplateError) as err:
                validate_file(p, ctx)
            assert err.value.code == code
            assert err.value.message_id and err.value.message_en
        return
    if code in XLSX_ONLY:
        # Only a spreadsheet cell can carry it: the same rows as XLSX, one birth date a date cell.
        rows = [list(r) for r in g.rows]
        d, m, y = (int(x) for x in rows[7][DATE_C].split("-"))
        rows[7][DATE_C] = dt.datetime(y, m, d)
        p = tmp_path / "list.xlsx"
        write_xlsx(p, rows)
        v = validate_file(p, ctx, scans=g.scans, other_pairs=g.other_pairs)
        assert {i for i, r in enumerate(v.reasons) if code in r} == {7}
        return
    expected = set(g.traps[code])
    got = {i for i, r in enumerate(v.reasons) if code in r}
    assert expected, f"generator has no trap for {code}"
    assert got == expected


def test_clean_rows_have_no_reasons(judged):
    g, v, _ = judged
    trapped = {i for rows in g.traps.values() for i in rows}
    dirty = [(i, v.reasons[i]) for i in range(len(v)) if i not in trapped and v.reasons[i]]
    assert dirty == []
    assert all(v.status[i] == "MS" for i in range(len(v)) if i not in trapped)


def test_verdict_is_worst_status(judged):
    _, v, _ = judged
    for status, reasons in zip(v.status, v.reasons):
        assert status == verdict_of(reasons)
    assert verdict_of(["NIK_SERIAL_0000", "DUP_PHONE"]) == "MS"
    assert verdict_of(["NO_KTP", "DUP_EXTERNAL"]) == "BMS"
    assert verdict_of(["NO_KTP", "UNDERAGE", "DUP_POTENTIAL"]) == "TMS"


def test_reason_table_statuses_match_reference():
    expected = {"NIK_FORMAT": "TMS", "NIK_DATE_INVALID": "TMS", "NIK_AS_NUMBER": "BMS", "NIK_SERIAL_0000": "F",
                "NIK_PREFIX_UNKNOWN": "F", "NIK_DOB_MISMATCH": "F", "REGION_CODE_INVALID": "BMS",
                "OUT_OF_REGION": "TMS", "UNDERAGE": "TMS", "PROHIBITED_OCCUPATION": "BMS", "DUP_INTERNAL": "TMS",
                "DUP_EXTERNAL": "PENDING", "DUP_POTENTIAL": "F", "DUP_PHONE": "F", "NO_KTP": "BMS",
                "NO_STATEMENT": "BMS", "TEMPLATE_INVALID": "FILE", "FIELD_INVALID": "BMS",
                "DATE_FROM_SPREADSHEET": "F"}
    assert {c: r.status for c, r in REASONS.items()} == expected
    assert all(r.label_id and r.label_en for r in REASONS.values())
    assert "TEMPLATE_INVALID" not in ROW_CODES


@pytest.mark.parametrize("shape", ["csv", "csv with a quoted cell", "xlsx"])
def test_a_nik_a_digit_short_and_one_a_digit_long_are_both_caught(ctx, tmp_path, shape):
    """Together they are 32 digits, as two good NIKs are: a shortcut over the joined NIKs once let
    both through as MS on every path but the plain CSV's."""
    from dukungan.generate import write_xlsx

    g = generate(ctx, 40, seed=3, dup_rate=0)
    trapped = {i for rows in g.traps.values() for i in rows}
    rows = [list(r) for i, r in enumerate(g.rows) if i not in trapped]  # every other NIK good
    short, long_, other = 0, 1, 2
    rows[short][1] = rows[short][1][:15]
    rows[long_][1] = rows[long_][1] + rows[long_][1][-1]
    if shape == "xlsx":
        path = tmp_path / "list.xlsx"
        write_xlsx(path, rows)
    else:
        path = tmp_path / "list.csv"
        if shape == "csv with a quoted cell":
            rows[other][2] = rows[other][2] + ", JR"  # csv quotes a cell with a comma
        write_csv(path, rows)
    v = validate_file(path, ctx)
    assert "NIK_FORMAT" in v.reasons[short] and "NIK_FORMAT" in v.reasons[long_]
    assert v.status[short] == v.status[long_] == "TMS"
