"""The numpy CSV path (dukungan.fast) gives exactly the reference's verdicts, row by row."""

from __future__ import annotations

import pickle
import random

import msgspec
import pytest

np = pytest.importorskip("numpy")

from dukungan import fast  # noqa: E402
from dukungan.generate import generate, template_traps, write_csv, write_xlsx  # noqa: E402
from dukungan.preflight import validate_file  # noqa: E402
from dukungan.rules import validate  # noqa: E402
from dukungan.scans import ScanSets  # noqa: E402
from dukungan.template import HEADER, Table, TemplateError, parse_csv_bytes, read_table  # noqa: E402

C = {h: i for i, h in enumerate(HEADER)}


def reference(data: bytes, ctx, scans=None, other_pairs=frozenset()):
    return validate(parse_csv_bytes(data), ctx, scans=scans, other_pairs=other_pairs)


def assert_same(data: bytes, ctx, scans=None, other_pairs=frozenset(), must_be_fast=True):
    """Fast and reference agree: same verdicts row by row, same table; or both reject the file."""
    try:
        want = reference(data, ctx, scans, other_pairs)
    except TemplateError:
        assert fast.validate_csv_bytes(data, ctx, scans, other_pairs) is None
        return None
    got = fast.validate_csv_bytes(data, ctx, scans, other_pairs)
    if got is None:
        assert not must_be_fast, "the fast path handed a file it should handle back to the reference"
        return None
    assert len(got) == len(want)
    diff = [(i, want.status[i], want.reasons[i], got.status[i], got.reasons[i])
            for i in range(len(want)) if (want.status[i], want.reasons[i]) != (got.status[i], got.reasons[i])]
    assert diff == []
    assert got.status == want.status and got.reasons == want.reasons
    for f in Table.__struct_fields__:
        assert getattr(got.table, f) == getattr(want.table, f), f
    return got


def csv_bytes(rows, header=HEADER, delimiter=",", bom=False, newline="\n") -> bytes:
    d = delimiter
    text = newline.join(d.join(r) for r in [list(header)] + [list(r) for r in rows]) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


@pytest.fixture(scope="module", params=["ctx", "synthetic_ctx"])
def case(request):
    ctx = request.getfixturevalue(request.param)
    return ctx, generate(ctx, 800, seed=21, dup_rate=0.03)


def test_generated_file_with_every_trap(case, tmp_path):
    ctx, g = case
    path = tmp_path / "list.csv"
    write_csv(path, g.rows)
    data = path.read_bytes()
    got = assert_same(data, ctx, g.scans, g.other_pairs)
    assert {c for r in got.reasons for c in r} == set(g.traps)  # every code is exercised
    assert_same(data, ctx)  # without scans and other pairs
    assert_same(data, ctx, ScanSets(), frozenset({"x"}))  # no scans at all: every row lacks both


def test_validate_file_routes_csv_to_the_fast_path(case, tmp_path, monkeypatch):
    ctx, g = case
    c, x = tmp_path / "a.csv", tmp_path / "a.xlsx"
    write_csv(c, g.rows)
    write_xlsx(x, g.rows)
    vc = validate_file(c, ctx, scans=g.scans, other_pairs=g.other_pairs)
    vx = validate_file(x, ctx, scans=g.scans, other_pairs=g.other_pairs)
    assert isinstance(vc.table, fast.LazyTable) and not isinstance(vx.table, fast.LazyTable)
    assert vc.status == vx.status and vc.reasons == vx.reasons
    monkeypatch.setenv("DUKUNGAN_FAST", "0")
    vr = validate_file(c, ctx, scans=g.scans, other_pairs=g.other_pairs)
    assert not isinstance(vr.table, fast.LazyTable)
    assert vr.status == vc.status and vr.reasons == vc.reasons


@pytest.mark.parametrize("variant", ["bom", "semicolon", "crlf", "cr", "trailing_newlines", "padded", "tabs",
                                     "non_ascii"])
def test_csv_variants(case, variant):
    ctx, g = case
    rows = [list(r) for r in g.rows]
    kw: dict = {}
    if variant == "bom":
        kw = dict(bom=True)
    elif variant == "semicolon":
        kw = dict(delimiter=";")
        for r in rows:
            r[C["ALAMAT"]] += ", KEL. CONTOH"  # a comma is plain text with ';'
    elif variant == "crlf":
        kw = dict(newline="\r\n")
    elif variant == "cr":
        kw = dict(newline="\r")
    elif variant == "padded":
        for k, r in enumerate(rows):
            if k % 7 == 0:
                r[C["NAMA"]] = "  " + r[C["NAMA"]] + " "
            if k % 11 == 0:
                r[C["NIK"]] = " " + r[C["NIK"]]
                r[C["NO_HP"]] += " "
            if k % 13 == 0:
                r[C["JENIS_KELAMIN"]] = " \x0b" + r[C["JENIS_KELAMIN"]] + "\x1f"
                r[C["KODE_DESA"]] = "\u00a0" + r[C["KODE_DESA"]] + "\u3000 "
    elif variant == "tabs":
        rows[3][C["PEKERJAAN"]] += "\t"
        rows[5][C["NAMA"]] = "\u2003" + rows[5][C["NAMA"]]
    elif variant == "non_ascii":
        for k, r in enumerate(rows):
            if k % 5 == 0:
                r[C["NAMA"]] = "JÖSÉ " + r[C["NAMA"]]
            if k % 9 == 0:
                r[C["TEMPAT_LAHIR"]] = "MAKASSAR\u00a0"
                r[C["ALAMAT"]] = "JL. ÇEMPAKA \u00a0"
    data = csv_bytes(rows, **kw)
    if variant == "trailing_newlines":
        data += b"\n\n\n"
    assert_same(data, ctx, g.scans, g.other_pairs)


# Values per column that exercise every branch of the reference rules (no delimiter, quote or newline,
# so the file stays on the fast path).
PALETTE = {
    "NIK": ["", "3171014505900001x", "317101450590000", "31710145059000011", "3.17101E+15", "3171014505900000.0",
            "3,17101E+15", "3171014505900001 ", "٣١٧١٠١٤٥٠٥٩٠٠٠٠١", "3171013205900001", "3171014513900001",
            "3171012902230001", "3171012902240001", "9901014505900001", "3171014505900000", "31710145O5900001",
            "1e16", "12345"],
    "NAMA": ["", " ", "A", "X" * 100, "X" * 101, "É" * 100, "É" * 101, "agus  santoso", "AGUS SANTOSO"],
    "JENIS_KELAMIN": ["", "L", "P", "l", "p", "X", "LAKI-LAKI", "laki laki", "PEREMPUAN", "PR", "LK", "Lk", " P ",
                      "LAKI  LAKI", "Ｌ"],
    "TEMPAT_LAHIR": ["", "jakarta", "JAKARTA", "JAKARTA  ", "BÖNE"],
    "TANGGAL_LAHIR": ["", "01-02-1990", "1-2-1990", "01/02/1990", "01.02.1990", "01-02/1990", "1990-02-01",
                      "1990/02/01", "31-02-1990", "29-02-2000", "29-02-1900", "00-01-1990", "01-13-1990",
                      "01-01-1899", "31-12-1899", "01-01-1900", "27-11-2024", "28-11-2024", "27-11-2007",
                      "28-11-2007", "01-01-2010", "٠١-٠٢-١٩٩٠", "01-02-90", "1990-2-1", "2024-11-27",
                      "01-02-19901", "x1-02-1990", "0001-01-01", "01-02-0000"],
    "STATUS_PERKAWINAN": ["", "B", "S", "P", "b", "s", "KAWIN", "Belum Kawin", "CERAI HIDUP", "cerai mati", "X",
                          "SUDAH  KAWIN"],
    "PEKERJAAN": ["", "PNS", "guru pns", "PENSIUNAN PNS", "Purn. TNI", "KEPALA DESA", "kepala  desa",
                  "ANGGOTA POLRI", "PNSX", "WIRASWASTA", "PEGAWAI NEGERI SIPIL (PNS)", "X" * 70 + " TNI",
                  "X" * 70, "ſekdes", "MANTAN KADES"],
    "ALAMAT": ["", " ", "JL. MAWAR", "jl.  mawar"],
    "RT": ["", "1", "01", "001", "0001", "1a", "١", "١٢٣٤", "²", " 1"],
    "RW": ["", "2", "002", "0002", "x", "٢"],
    "KODE_DESA": ["", "31.71.01.1001", "31.71.01.100", "31.71.01.10011", "3171011001", "31.71.01", "19.7",
                  "31.7", "3171", "99.99.99.9999", "31.71.01.9999", "31.71.01-1001", "٣١.٧١.٠١.١٠٠١"],
    "NO_HP": ["", "081234567890", "0812-3456-7890", "+62 812 3456 7890", "6281234567890", "81234567890",
              "62", "8", "0", "abc", "٠٨١٢٣٤٥٦٧٨٩٠", "08123456789012345678", "628", "0812345678901234",
              "8123456789012345", "6212345678901234"],
}


def _mutate(rows, rnd: random.Random, share: float):
    rows = [list(r) for r in rows]
    for r in rows:
        for name, values in PALETTE.items():
            if rnd.random() < share:
                r[C[name]] = rnd.choice(values)
    # duplicates with the same and with changed identity data, phones shared across NIKs
    for _ in range(len(rows) // 10):
        a, b = rnd.randrange(len(rows)), rnd.randrange(len(rows))
        rows[b][C["NIK"]] = rows[a][C["NIK"]]
        if rnd.random() < 0.5:
            rows[b] = list(rows[a])
        if rnd.random() < 0.3:
            rows[b][C["NO_HP"]] = rows[a][C["NO_HP"]]
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_mutated_lists_agree_with_the_reference(case, seed):
    ctx, g = case
    rnd = random.Random(seed)
    rows = _mutate(g.rows, rnd, share=0.08)
    # the KODE_DESA palette needs a village of the list in force
    village = sorted(ctx.region_villages)[0]
    for r in rows:
        if r[C["KODE_DESA"]] == "31.71.01.1001":
            r[C["KODE_DESA"]] = village
    bad_niks = {r[C["NIK"]] for r in rows if not (len(r[C["NIK"]]) == 16 and r[C["NIK"]].isdigit())}
    scans = ScanSets(ktp=frozenset(list(g.scans.ktp)[::2]) | set(list(bad_niks)[::2]), statement=g.scans.statement)
    other = frozenset(list(g.scans.ktp)[::7]) | set(list(bad_niks)[1::3])
    # "3,17101E+15" shifts a comma-separated row: the whole list checks both ways. Date serials and
    # numeric codes in the palette are row verdicts, so the lists without a shifted row stay fast.
    assert_same(csv_bytes(rows), ctx, scans, other, must_be_fast=False)
    assert assert_same(csv_bytes([r for r in rows if "," not in "".join(r)]), ctx, scans, other) is not None
    assert assert_same(csv_bytes(rows, delimiter=";", newline="\r\n", bom=True), ctx, scans, other) is not None


def test_template_traps_are_left_to_the_reference(case, tmp_path):
    ctx, g = case
    for name, (header, rows) in template_traps(g.rows[:50]).items():
        p = tmp_path / f"{name}.csv"
        write_csv(p, rows, header=header)
        assert fast.validate_csv_bytes(p.read_bytes(), ctx) is None, name
        with pytest.raises(TemplateError) as a:
            validate_file(p, ctx)
        with pytest.raises(TemplateError) as b:
            reference(p.read_bytes(), ctx)
        assert (a.value.message_en, a.value.problems) == (b.value.message_en, b.value.problems)


@pytest.mark.parametrize("body", [
    '1,"3171014505900001",A,L,X,01-01-1990,B,X,X,1,1,31.71.01.1001,\n',  # quoted cell
    "1,3171014505900001,A,L\n",  # short row
    "1,3171014505900001,A,L,X,01-01-1990,B,X,X,1,1,31.71.01.1001,,EXTRA\n",  # long row
    "\n1,3171014505900001,A,L,X,01-01-1990,B,X,X,1,1,31.71.01.1001,\n",  # blank line
    "1,3171014505900001," + "A" * 1200 + ",L,X,01-01-1990,B,X,X,1,1,31.71.01.1001,\n",  # huge cell
])
def test_shapes_outside_the_fast_path_fall_back(ctx, body, tmp_path):
    data = (",".join(HEADER) + "\n" + body).encode()
    assert fast.validate_csv_bytes(data, ctx) is None
    p = tmp_path / "x.csv"
    p.write_bytes(data)
    try:
        want = reference(data, ctx)
    except TemplateError as e:
        with pytest.raises(TemplateError) as got:
            validate_file(p, ctx)
        assert got.value.message_en == e.message_en
        return
    v = validate_file(p, ctx)
    assert v.status == want.status and v.reasons == want.reasons


def test_lazy_table_behaves_like_a_table(case):
    ctx, g = case
    data = csv_bytes(g.rows)
    v = fast.validate_csv_bytes(data, ctx, g.scans, g.other_pairs)
    want = reference(data, ctx, g.scans, g.other_pairs)
    t = v.table
    assert len(t) == len(want.table) == len(v)
    assert t.row(3) == want.table.row(3) and t.column("NIK") == want.table.nik
    assert v.row(5) == want.row(5)
    assert list(v.rows()) == list(want.rows())
    assert t == want.table
    back = pickle.loads(pickle.dumps(t))
    assert type(back) is Table and back == want.table


# ---- XLSX tables on the numpy path (fast.validate_table)


def _assert_same_table(t: Table, ctx, scans=None, other_pairs=frozenset(), must_be_fast=True):
    ref = validate(t, ctx, scans=scans, other_pairs=other_pairs)
    got = fast.validate_table(t, ctx, scans=scans, other_pairs=other_pairs)
    if must_be_fast:
        assert got is not None, "expected the numpy path to take this table"
    if got is not None:
        assert got.status == ref.status
        assert got.reasons == ref.reasons
        assert got.table is t  # the sheet's row numbers, not a CSV's lines
    return got


@pytest.mark.parametrize("seed", range(3))
def test_mutated_xlsx_lists_agree_with_the_reference(case, seed, tmp_path):
    ctx, g = case
    rows = _mutate(g.rows[:3000], random.Random(seed), share=0.08)
    village = sorted(ctx.region_villages)[0]
    for r in rows:
        if r[C["KODE_DESA"]] == "31.71.01.1001":
            r[C["KODE_DESA"]] = village
    path = tmp_path / "dukungan.xlsx"
    write_xlsx(path, rows)
    t = read_table(path)
    # A shifted row (a comma in a cell) is written out as more cells: the reference judges it.
    must = all("," not in c and "\n" not in c for r in rows for c in r)
    _assert_same_table(t, ctx, ScanSets(ktp=frozenset(list(g.scans.ktp)[::2]), statement=g.scans.statement),
                       frozenset(list(g.scans.ktp)[::7]), must_be_fast=must)
    clean = tmp_path / "clean.xlsx"
    write_xlsx(clean, [r for r in rows if "," not in "".join(r) and '"' not in "".join(r)])
    _assert_same_table(read_table(clean), ctx, g.scans)


@pytest.mark.parametrize("fmt", ["xlsx from the template", "xlsx saved by a spreadsheet program"])
def test_the_trap_list_in_xlsx_gets_the_references_verdicts_on_the_numpy_path(ctx, fmt, tmp_path):
    from tests.traps import write_trap_set

    ts = write_trap_set(tmp_path, ctx, fmt)
    t = read_table(ts.list_path)
    assert t.date_from_sheet and t.nik_numeric  # the typed cells are there to be judged
    # A NIK cell that still reads as 16 digits goes to the reference (its text counts for
    # duplicates); without it, the numpy path takes the sheet.
    got = _assert_same_table(t, ctx, ts.traps.scans, must_be_fast=False)
    if got is None:
        assert any(len(t.nik[i]) == 16 and t.nik[i].isdigit() for i in t.nik_numeric)
    # The same sheet with the number cell showing 15 digits (a digit gone, and nothing in the text
    # that says "number"): the numpy path takes it, and judges both typed cells by their type.
    nik = list(t.nik)
    for i in t.nik_numeric:
        nik[i] = nik[i][:15]
    _assert_same_table(msgspec.structs.replace(t, nik=nik), ctx, ts.traps.scans)


def test_an_xlsx_sheet_is_judged_on_the_numpy_path_with_the_references_verdicts(case, tmp_path, monkeypatch):
    ctx, g = case
    path = tmp_path / "dukungan"  # stored without an extension, as the server keeps uploads
    write_xlsx(path, g.rows[:500])
    assert fast.validate_table(read_table(path), ctx, g.scans) is not None  # the path takes this sheet
    v = validate_file(path, ctx, g.scans)
    monkeypatch.setenv("DUKUNGAN_FAST", "0")  # the reference path
    r = validate_file(path, ctx, g.scans)
    assert v.table.source == r.table.source == "xlsx"
    assert (v.status, v.reasons) == (r.status, r.reasons)
