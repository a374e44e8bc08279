"""Parsing CSV/XLSX, template integrity traps, and bad inputs that must give a clear rejection."""

from __future__ import annotations

import datetime as dt

import openpyxl
import pytest

from dukungan.generate import generate, write_csv, write_xlsx
from dukungan.preflight import check_file, format_summary, validate_file
from dukungan.reasons import ORDER
from dukungan.template import HEADER, MAX_CELL_CHARS, TemplateError, _header_problem, read_table, write_template

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


def _with_shared_strings(src, dst) -> None:
    """A copy of the XLSX `src` (openpyxl writes inline strings) with every string in a shared-strings
    table, as Excel, LibreOffice and Google Sheets save them."""
    import re
    import zipfile
    from xml.sax.saxutils import escape, unescape
    index: dict[str, int] = {}

    def shared(m: re.Match) -> bytes:
        text = unescape((m.group(3) or b"").decode())  # group 2: an empty string, <c t="inlineStr" />
        return b'<c r="%s" t="s"><v>%d</v></c>' % (m.group(1), index.setdefault(text, len(index)))
    inline = re.compile(rb'<c r="([A-Z]+[0-9]+)" t="inlineStr"'
                        rb'(?: />()|><is><t(?: xml:space="preserve")?>([^<]*)</t></is></c>)')
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = inline.sub(shared, data)
                assert b"inlineStr" not in data
            elif item.filename == "[Content_Types].xml":
                data = data.replace(b"</Types>", b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
                                    b'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>')
            elif item.filename == "xl/_rels/workbook.xml.rels":
                data = data.replace(b"</Relationships>", b'<Relationship Id="rIdSst" Type="http://schemas.'
                                    b'openxmlformats.org/officeDocument/2006/relationships/sharedStrings" '
                                    b'Target="sharedStrings.xml"/></Relationships>')
            zout.writestr(item, data)
        zout.writestr("xl/sharedStrings.xml", '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                      + "".join(f'<si><t xml:space="preserve">{escape(s)}</t></si>' for s in index) + "</sst>")


def _both_readers(path, handed_over: list | None = None) -> list:
    """What the calamine reader and the openpyxl reader make of `path`: a Table, or the refusal.
    The bytes parse_xlsx hands over to the openpyxl reader go to `handed_over`."""
    from dukungan import template
    old = template._parse_xlsx_openpyxl
    seen = handed_over if handed_over is not None else []
    out = []
    for read in (lambda p: template.parse_xlsx(p, slow_reader=lambda d: seen.append(d) or old(d)), old):
        try:
            out.append(read(path))
        except TemplateError as e:
            out.append((e.message_id, e.message_en))
    return out


def _sheet_shapes(ctx, rows, tmp_path) -> dict:
    """Sheets as teams make them: typed cells, formats, blank rows, data not starting at A1."""
    from openpyxl.utils.datetime import to_excel
    shapes = {}

    def put(name, content):
        shapes[name] = p = tmp_path / f"{name}.xlsx"
        if callable(content):
            content(p)
        else:
            write_xlsx(p, content)
    put("inline strings", rows)
    put("shared strings", lambda p: _with_shared_strings(shapes["inline strings"], p))

    def filled_template(p):
        write_template(p, rows=50)
        wb = openpyxl.load_workbook(p)
        ws = wb.active
        for r, row in enumerate(generate(ctx, 30, seed=3).rows, start=2):
            for c, value in enumerate(row, start=1):
                ws.cell(row=r, column=c, value=value)
        wb.save(p)
    put("filled template", filled_template)

    def typed(p):
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(list(HEADER))
        for row in rows:
            ws.append(list(row))
        ws.cell(row=3, column=DATE_C + 1, value=27815).number_format = "DD-MM-YYYY"  # a date-styled serial
        ws.cell(row=4, column=DATE_C + 1, value=27815.75).number_format = "[$-421]d mmmm yyyy"
        ws.cell(row=5, column=DATE_C + 1, value=dt.datetime(1976, 2, 25))
        ws.cell(row=6, column=DATE_C + 1, value=27815)  # a serial without a date style
        ws.cell(row=7, column=NIK_C + 1, value=float(rows[5][NIK_C]))  # NIK typed as a number
        ws.cell(row=8, column=NIK_C + 1, value=int(rows[6][NIK_C]))
        ws.cell(row=9, column=NIK_C + 1, value=True)
        ws.cell(row=10, column=CODE_C + 1, value=19.71)
        ws.cell(row=11, column=HEADER.index("RT") + 1, value=4)
        ws.cell(row=12, column=HEADER.index("NO_HP") + 1, value=81234567890)
        ws.cell(row=13, column=HEADER.index("ALAMAT") + 1, value=dt.datetime(2024, 5, 8, 10, 30))
        whole_day = to_excel(dt.datetime(2024, 5, 8))
        ws.cell(row=14, column=HEADER.index("ALAMAT") + 1, value=whole_day).number_format = "d/m/yyyy"
        ws.cell(row=15, column=HEADER.index("ALAMAT") + 1, value=dt.time(7, 15))
        ws.cell(row=16, column=HEADER.index("ALAMAT") + 1, value=dt.timedelta(hours=30))
        ws.cell(row=17, column=HEADER.index("NAMA") + 1, value="  SITI\u00a0 ")
        for c in range(1, len(HEADER) + 1):  # a blank row in the middle, and one of white space
            ws.cell(row=20, column=c).value = None
            ws.cell(row=21, column=c, value="   ")
        ws.cell(row=25, column=1).value = None  # a row missing its first cell
        wb.save(p)
    put("typed cells and blank rows", typed)

    def offset_sheet(first_row: int, first_column: int):
        """The header and five rows, starting at (first_row, first_column) instead of A1."""
        def build(p):
            wb = openpyxl.Workbook()
            ws = wb.active
            for r, row in enumerate([list(HEADER)] + [list(x) for x in rows[:5]], start=first_row):
                for c, value in enumerate(row, start=first_column):
                    ws.cell(row=r, column=c, value=value)
            wb.save(p)
        return build
    put("leading empty rows", offset_sheet(3, 1))  # two empty rows first
    put("leading empty column", offset_sheet(1, 2))  # column A empty
    with_errors = [list(r) for r in rows]
    with_errors[3][HEADER.index("NAMA")] = "#N/A"  # openpyxl writes these as error cells
    with_errors[4] = ["#REF!"] * len(HEADER)
    put("error cells", with_errors)
    beyond = [list(r) for r in rows]
    beyond[8] = beyond[8] + [" "]  # white space only, which calamine reads as ""
    beyond[9] = beyond[9] + ["", 0]
    put("a value beyond the template", beyond)
    put("header only", [])
    return shapes


def test_the_calamine_reader_gives_the_table_the_openpyxl_reader_gave(ctx, gen, tmp_path):
    """parse_xlsx reads with calamine, about 10x faster than openpyxl; a list reads the same
    either way: cells, sheet row numbers, NIK-as-number and date-cell flags, refusals. The two
    sheets calamine cannot read as openpyxl did go to the openpyxl reader, and only those."""
    rows = [list(r) for r in gen.rows[:40]]
    shapes = _sheet_shapes(ctx, rows, tmp_path)
    handed_over: list = []
    for name, path in shapes.items():
        calamine, old = _both_readers(path, handed_over)
        assert calamine == old, name
        if name in ("inline strings", "shared strings"):
            assert calamine.row(0) == tuple(rows[0]) and calamine.row_no == list(range(2, 42)), name
    assert handed_over == [shapes["error cells"].read_bytes(), shapes["a value beyond the template"].read_bytes()]
    calamine, _ = _both_readers(shapes["typed cells and blank rows"])
    assert calamine.tanggal_lahir[1:4] == ["25-02-1976"] * 3 and calamine.date_from_sheet == frozenset({1, 2, 3})
    assert calamine.nik_numeric == frozenset({5, 6, 7}) and 20 not in calamine.row_no and 21 not in calamine.row_no
    assert _both_readers(shapes["leading empty rows"])[0][1] == "The first row (the header) is empty."
    assert "N10" in _both_readers(shapes["a value beyond the template"])[0][1]


def _moved(cols, name, to):
    cols = [c for c in cols if c != name]
    cols.insert(to, name)
    return cols


def _swapped(cols, a, b):
    cols = list(cols)
    i, j = cols.index(a), cols.index(b)
    cols[i], cols[j] = cols[j], cols[i]
    return cols


@pytest.mark.parametrize("header, says_en, says_id", [
    (_swapped(HEADER, "NAMA", "JENIS_KELAMIN"), ("NAMA and JENIS_KELAMIN are swapped", "shifted", "3 (C)", "4 (D)"),
     ("tertukar", "bergeser")),
    (_moved(HEADER, "NAMA", 12), ("NAMA was moved from position 3 (C) to position 13 (M)", "shifted"),
     ("dipindah", "bergeser")),
    (_moved(HEADER, "NO_HP", 0), ("NO_HP was moved from position 13 (M) to position 1 (A)", "shifted"),
     ("dipindah", "bergeser")),
    (_swapped(_swapped(HEADER, "NO", "RT"), "NIK", "RW"), ("order is shifted", "position 1 (A) holds RT where NO"),
     ("bergeser",)),
], ids=["two swapped", "moved to the end", "moved to the front", "several moved"])
def test_a_header_with_every_column_in_another_order_says_which_moved_and_shifted(header, says_en, says_id):
    problem = _header_problem(header)
    assert problem is not None
    assert [s for s in says_en if s not in problem.message_en] == [], problem.message_en
    assert [s for s in says_id if s not in problem.message_id] == [], problem.message_id
