"""Parsing CSV/XLSX, template integrity traps, and bad inputs that must give a clear rejection."""

from __future__ import annotations

import datetime as dt

import openpyxl
import pytest

from dukungan.generate import generate, write_csv, write_xlsx
from dukungan.preflight import check_file, format_summary, validate_file
from dukungan.reasons import ORDER
from dukungan.template import HEADER, MAX_CELL_CHARS, TemplateError, read_table, write_template

NIK_C, DATE_C, CODE_C = HEADER.index("NIK"), HEADER.index("TANGGAL_LAHIR"), HEADER.index("KODE_DESA")


@pytest.fixture(scope="module")
def gen(ctx):
    return generate(ctx, 120, seed=9, dup_rate=0.05)


def test_csv_and_xlsx_give_identical_verdicts(ctx, gen, tmp_path):
    c, x = tmp_path / "a.csv", tmp_path / "a.xlsx"
    write_csv(c, gen.rows)
    write_xlsx(x, gen.rows)
    vc = validate_file(c, ctx, scans=gen.scans, other_pairs=gen.other_pairs)
    vx = validate_file(x, ctx, scans=gen.scans, other_pairs=gen.other_pairs)
    assert vc.status == vx.status and vc.reasons == vx.reasons
    assert vc.table.row_no == vx.table.row_no


def test_an_xlsx_stored_without_an_extension_is_judged_as_the_same_file_with_one(ctx, gen, tmp_path):
    """The server stores an upload under its id, with no extension: the file is read by its
    content. openpyxl given that name refused it ("does not support file format"), so every
    XLSX list was rejected on the server."""
    named, stored = tmp_path / "daftar.xlsx", tmp_path / "4f1c9a0e2b7d"
    write_xlsx(named, gen.rows)
    stored.write_bytes(named.read_bytes())
    want = validate_file(named, ctx, scans=gen.scans, other_pairs=gen.other_pairs)
    got = validate_file(stored, ctx, scans=gen.scans, other_pairs=gen.other_pairs)
    assert got.table.source == "xlsx"
    assert got.status == want.status and got.reasons == want.reasons


def test_bom_semicolon_crlf_quoting_and_spaces_are_accepted(ctx, gen, tmp_path):
    base = tmp_path / "base.csv"
    write_csv(base, gen.rows)
    want = validate_file(base, ctx)
    variants = {"bom.csv": dict(bom=True), "semi.csv": dict(delimiter=";")}
    for name, kw in variants.items():
        write_csv(tmp_path / name, gen.rows, **kw)
    rows = [list(r) for r in gen.rows]
    for r in rows:
        r[HEADER.index("ALAMAT")] = r[HEADER.index("ALAMAT")] + ", KEL. CONTOH"  # quoted cells
        r[HEADER.index("NAMA")] = "  " + r[HEADER.index("NAMA")] + " "
    write_csv(tmp_path / "quoted.csv", rows)
    (tmp_path / "crlf.csv").write_bytes(base.read_bytes().replace(b"\n", b"\r\n"))
    for name in ("bom.csv", "semi.csv", "quoted.csv", "crlf.csv"):
        got = validate_file(tmp_path / name, ctx)
        assert got.status == want.status and got.reasons == want.reasons, name


def _xlsx_with(tmp_path, rows, header=HEADER):
    p = tmp_path / "t.xlsx"
    write_xlsx(p, rows, header=header)
    return p


def test_numeric_nik_cell_is_nik_as_number(ctx, gen, tmp_path):
    rows = [list(r) for r in gen.rows[:5]]
    rows[2][NIK_C] = float(rows[2][NIK_C])  # what Excel stores: 15 significant digits
    rows[3][NIK_C] = int(rows[3][NIK_C])
    v = validate_file(_xlsx_with(tmp_path, rows), ctx)
    assert v.reasons[2] == ("NIK_AS_NUMBER",) and v.status[2] == "BMS"
    assert v.reasons[3] == ("NIK_AS_NUMBER",)
    assert v.reasons[0] == ()


def test_nik_as_number_text_in_csv(ctx, gen, tmp_path):
    rows = [list(r) for r in gen.rows[:3]]
    rows[1][NIK_C] = "3.17101E+15"
    p = tmp_path / "n.csv"
    write_csv(p, rows)
    r = check_file(p, ctx)
    assert r.reasons == {"NIK_AS_NUMBER": 1}
    assert "digit terakhir hilang" in format_summary(r) and "last digit lost" in format_summary(r)


@pytest.mark.parametrize("col,value,code", [
    (DATE_C, 32874, "FIELD_INVALID"),  # a serial without a date style: not a date as it stands
    (CODE_C, 19.71, "REGION_CODE_INVALID"),  # a code typed as a number
    (CODE_C, 3210, "REGION_CODE_INVALID"),
])
def test_one_non_text_cell_is_a_verdict_on_its_row_never_a_rejected_list(ctx, gen, tmp_path, col, value, code):
    """At 23:50 one cell must not throw away a pair's list: the row gets the verdict, the other
    rows are judged as if the cell were not there."""
    rows = [list(r) for r in gen.rows[:400]]
    clean = validate_file(_xlsx_with(tmp_path, rows), ctx)
    rows[1][col] = value
    v = validate_file(_xlsx_with(tmp_path, rows), ctx)
    assert code in v.reasons[1] and v.status[1] != "MS"
    assert v.status[2:] == clean.status[2:] and v.reasons[2:] == clean.reasons[2:]


def test_a_date_cell_becomes_the_date_it_shows_with_a_flag(ctx, gen, tmp_path):
    """A date cell is read as the date the sheet shows, without loss, and flagged."""
    rows = [list(r) for r in gen.rows[:5]]
    shown = rows[2][DATE_C]
    d, m, y = (int(x) for x in shown.split("-"))
    rows[2][DATE_C] = dt.datetime(y, m, d)
    v = validate_file(_xlsx_with(tmp_path, rows), ctx)
    clean = validate_file(_xlsx_with(tmp_path, [list(r) for r in gen.rows[:5]]), ctx)
    assert v.table.tanggal_lahir[2] == shown
    assert v.reasons[2] == tuple(sorted(clean.reasons[2] + ("DATE_FROM_SPREADSHEET",), key=ORDER.get))
    assert v.status[2] == clean.status[2]


def test_a_serial_the_sheet_shows_as_a_date_reads_as_that_date(tmp_path):
    """The cell as a spreadsheet program saves it: the number 27815 with a date number format,
    which Excel and LibreOffice show as 25-02-1976 (serial 25569 is 01-01-1970; 2,191 days to
    01-01-1976, 31 + 24 more)."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(HEADER))
    ws.append(["1", "3171016502760001", "SITI", "P", "JAKARTA", 27815, "S", "X", "JL. X", "1", "1",
               "31.71.01.1001", ""])
    ws.cell(row=2, column=DATE_C + 1).number_format = "DD-MM-YYYY"
    p = tmp_path / "saved-by-a-spreadsheet"
    wb.save(p)
    t = read_table(p)
    assert t.tanggal_lahir == ["25-02-1976"] and t.date_from_sheet == frozenset({0})


def test_shifted_columns_in_xlsx_name_the_column(ctx, gen, tmp_path):
    header = [h for h in HEADER if h != "TEMPAT_LAHIR"]
    rows = [r[:4] + r[5:] for r in gen.rows[:3]]
    with pytest.raises(TemplateError) as e:
        validate_file(_xlsx_with(tmp_path, rows, header), ctx)
    assert "TEMPAT_LAHIR" in e.value.message_en and "5 (E)" in e.value.message_en
    assert "TEMPAT_LAHIR" in e.value.message_id


def test_shifted_row_in_xlsx(ctx, gen, tmp_path):
    rows = [list(r) for r in gen.rows[:3]]
    rows[1] = rows[1][:2] + ["X"] + rows[1][2:]
    with pytest.raises(TemplateError) as e:
        validate_file(_xlsx_with(tmp_path, rows), ctx)
    assert "N3" in e.value.message_en


@pytest.mark.parametrize("name,content,needle", [
    ("empty.csv", b"", "empty"),
    ("blank.csv", b"\xef\xbb\xbf \r\n", "empty"),
    ("garbage.csv", bytes(range(256)) * 20, "binary"),
    ("latin1.csv", (",".join(HEADER) + "\n1,3171014505900001,J\xd6SE,L\n").encode("latin-1"), "not UTF-8"),
    ("utf16.csv", (",".join(HEADER) + "\n").encode("utf-16"), "UTF-16"),
    ("header_only.csv", (",".join(HEADER) + "\n").encode(), "no rows"),
    ("zip.csv", b"PK\x03\x04rest", "XLSX"),
    ("fake.xlsx", b"PK\x03\x04 not really a zip", "Not a valid XLSX"),
    ("old.xls", b"\xd0\xcf\x11\xe0", ".xls"),
    ("no_header.csv", b"1,3171014505900001,A\n", "Column 1 (A)"),
])
def test_bad_inputs_are_clear_rejections(ctx, tmp_path, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(TemplateError) as e:
        validate_file(p, ctx)
    assert needle in e.value.message_en
    r = check_file(p, ctx)
    assert r.rejected and "DITOLAK" in format_summary(r)


@pytest.mark.parametrize("quoted", [False, True])
def test_huge_cell(ctx, gen, tmp_path, quoted):
    rows = [list(r) for r in gen.rows[:3]]
    rows[1][HEADER.index("ALAMAT")] = ("A, " if quoted else "A") * (MAX_CELL_CHARS + 5)
    p = tmp_path / "huge.csv"
    write_csv(p, rows)
    with pytest.raises(TemplateError) as e:
        validate_file(p, ctx)
    assert str(MAX_CELL_CHARS) in e.value.message_en


def test_csv_field_larger_than_csv_module_limit(ctx, tmp_path):
    p = tmp_path / "giant.csv"
    p.write_text(",".join(HEADER) + '\n1,"' + "x" * 200_000 + '",\n', encoding="utf-8")
    with pytest.raises(TemplateError):
        validate_file(p, ctx)


def test_a_header_cell_larger_than_csv_module_limit_is_a_clear_rejection(ctx, tmp_path):
    p = tmp_path / "giant-header.csv"
    p.write_text("x" * 200_000 + "\n1,2\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="header line"):
        validate_file(p, ctx)


def test_ragged_csv_row_pads_or_rejects(ctx, gen, tmp_path):
    p = tmp_path / "r.csv"
    lines = [",".join(HEADER)] + [",".join(r) for r in gen.rows[:3]]
    lines[2] = lines[2] + ",EXTRA"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TemplateError) as e:
        validate_file(p, ctx)
    assert "Line 3" in e.value.message_en


def test_blank_template(tmp_path, ctx):
    p = tmp_path / "template.xlsx"
    write_template(p, rows=50)
    wb = openpyxl.load_workbook(p)
    ws = wb.active
    assert [c.value for c in ws[1]] == list(HEADER)
    assert ws.protection.sheet is True
    assert all(c.protection.locked for c in ws[1])
    assert ws["B2"].number_format == "@" and ws["F30"].number_format == "@" and ws["L51"].number_format == "@"
    assert not ws["B2"].protection.locked
    assert ws.column_dimensions["B"].number_format == "@"
    # A filled-in template parses and validates (text cells stay text).
    g = generate(ctx, 5, seed=2, traps=False)
    for r, row in enumerate(g.rows, start=2):
        for c, value in enumerate(row, start=1):
            ws.cell(row=r, column=c, value=value)
    wb.save(p)
    assert set(validate_file(p, ctx).status) == {"MS"}
    assert len(read_table(p)) == 5


def _sheet_edited(src, dst, edit) -> None:
    """A copy of the XLSX `src` whose first sheet's XML went through `edit`."""
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, edit(data) if item.filename == "xl/worksheets/sheet1.xml" else data)


def test_a_stale_dimension_tag_hides_no_rows_and_no_columns(gen, tmp_path):
    """A sheet's <dimension> may be stale or forged; read-only openpyxl trusts it and once
    stopped at the rows and columns it names, silently dropping the rest."""
    import re
    src = tmp_path / "list.xlsx"
    write_xlsx(src, gen.rows[:40])
    stale = tmp_path / "stale.xlsx"

    def with_stale_dimension(xml: bytes) -> bytes:
        xml = re.sub(rb"<dimension[^>]*/>", b"", xml)
        return xml.replace(b"<sheetData", b'<dimension ref="A1:M5"/><sheetData', 1)
    _sheet_edited(src, stale, with_stale_dimension)
    assert len(read_table(stale)) == 40
    shifted = [list(r) for r in gen.rows[:40]]
    shifted[30] = shifted[30] + ["beyond the template"]
    write_xlsx(src, shifted)
    _sheet_edited(src, stale, with_stale_dimension)
    with pytest.raises(TemplateError, match="beyond the template"):
        read_table(stale)


def test_a_damaged_sheet_is_a_clear_rejection(gen, tmp_path):
    src = tmp_path / "list.xlsx"
    write_xlsx(src, gen.rows[:40])
    damaged = tmp_path / "damaged.xlsx"
    _sheet_edited(src, damaged, lambda xml: xml[: len(xml) // 2])
    with pytest.raises(TemplateError, match="XLSX"):
        read_table(damaged)


def test_the_verdict_export_shows_formulas_as_text(ctx, gen, tmp_path):
    """A team's cell that a spreadsheet would run (=, +, -, @) reaches the verdict export, which
    is made to be opened in Excel, as text."""
    import csv as _csv
    import io

    from dukungan.export import verdicts_csv_text
    rows = [list(r) for r in gen.rows[:5]]
    rows[1][2] = "=HYPERLINK(\"http://x\",\"klik\")"
    rows[2][2] = "@SUM(A1)"
    p = tmp_path / "list.csv"
    write_csv(p, rows)
    exported = list(_csv.reader(io.StringIO(verdicts_csv_text(validate_file(p, ctx).rows()).lstrip("\ufeff"))))
    names = [line[2] for line in exported[1:]]
    assert names[1] == "'=HYPERLINK(\"http://x\",\"klik\")" and names[2] == "'@SUM(A1)"
    assert names[0] == rows[0][2]


@pytest.mark.parametrize("space", ["\u00a0", "\u3000", "\x0c"])
def test_other_whitespace_reads_the_same_in_every_file_shape(ctx, gen, tmp_path, space):
    """A NIK ending in a no-break space, a name that is only one: the verdicts may not depend
    on whether the file also has an ordinary space somewhere, quotes, or is an XLSX."""
    rows = [list(r) for r in gen.rows[:20]]
    rows = [[c.replace(" ", "") for c in r] for r in rows]  # no ordinary space anywhere
    rows[1][1] = rows[1][1] + space
    rows[2][2] = space
    verdicts = {}
    shapes = ("plain csv", "quoted csv") + (("xlsx",) if ord(space) > 127 else ())
    for shape in shapes:  # XLSX cannot hold a control character such as form feed
        shaped = [list(r) for r in rows]
        if shape == "quoted csv":
            shaped[3][6] = shaped[3][6] + ",X"
        path = tmp_path / (shape.replace(" ", "-") + (".xlsx" if shape == "xlsx" else ".csv"))
        (write_xlsx if shape == "xlsx" else write_csv)(path, shaped)
        v = validate_file(path, ctx)
        verdicts[shape] = [(v.status[i], sorted(v.reasons[i])) for i in (1, 2)]
    assert all(v == verdicts["quoted csv"] for v in verdicts.values()), verdicts


def test_an_xlsx_that_unpacks_a_thousandfold_is_refused_unread(gen, tmp_path):
    """A 1 MB XLSX once unpacked to 1.2 GB of padding and held a validator for seconds and 1.3 GB
    of memory; a larger one would exhaust it. Such a sheet is refused before it is read."""
    from dukungan.template import BOMB_MIN_BYTES
    src = tmp_path / "list.xlsx"
    write_xlsx(src, gen.rows[:5])
    bomb = tmp_path / "bomb.xlsx"
    padding = b" " * (BOMB_MIN_BYTES + 1)
    _sheet_edited(src, bomb, lambda xml: xml.replace(b"<sheetData", padding + b"<sheetData", 1))
    assert bomb.stat().st_size < BOMB_MIN_BYTES // 200
    with pytest.raises(TemplateError, match="unpacks"):
        read_table(bomb)


def test_the_english_summary_says_one_row_not_one_rows(ctx, tmp_path):
    g = generate(ctx, 1, seed=4, traps=False)
    p = tmp_path / "one.csv"
    write_csv(p, g.rows)
    english = format_summary(check_file(p, ctx)).split("English:")[1]
    assert "1 row:" in english and "1 rows" not in english
