"""Trap lists of our own (issue 19, item 7): one supporter list with one trap of each kind, the
structural traps, and a writer for every format a team sends, so that every judge of a list
(`unggah check`, the server, and the browser page once it exists) gets the same files and is held
to the same verdicts.

The hook for the browser page's test is `write_trap_set(folder, ctx, fmt, seed)`: it writes the
list, its scans and one file per structural trap in format `fmt` (a key of FORMATS) and returns a
TrapSet saying what each file must get (`expected_rows`, STRUCTURAL[name].says). The page's test
feeds it those files and compares what the page shows with the same expectations.

Cells are values typed as a spreadsheet holds them: `str` is a text cell, `int` or `float` a number
cell, `datetime.date` a date cell (a serial with a date style). A CSV holds what the sheet shows
(`shown`), so a number cell reaches a CSV as a spreadsheet exports it: a 16-digit NIK typed as a
number is `3.17101E+15` there.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple, Sequence
from xml.sax.saxutils import escape

import openpyxl

from dukungan.generate import generate, template_traps, write_csv
from dukungan.nik import make_nik
from dukungan.reasons import sort_codes, verdict_of
from dukungan.rules import RuleContext
from dukungan.scans import ScanSets
from dukungan.template import HEADER, NCOLS, col_letter, write_template

Cell = str | int | float | dt.date
COL = {h: i for i, h in enumerate(HEADER)}
# Codes about a cell's type: only a format that has cell types (XLSX) can carry them. In a CSV the
# same cell is the text the sheet showed, which is read without loss and so without the flag.
CELL_TYPE_CODES = frozenset({"DATE_FROM_SPREADSHEET"})
# Row-level codes no single list can provoke: DUP_EXTERNAL needs another pair's counted NIKs, which
# only the server has (`unggah check` has no input for them).
NOT_FROM_ONE_LIST = frozenset({"DUP_EXTERNAL"})
SCAN_CODES = ("NO_KTP", "NO_STATEMENT")
# How a date cell is shown, as a spreadsheet with Indonesian settings shows its short date.
DATE_SHOWN = "dd/mm/yyyy"


class TrapRow(NamedTuple):
    name: str  # what is wrong with the row, or "good ..." for a row that must count
    cells: list[Cell]  # HEADER order
    reasons: tuple[str, ...]  # the codes it must get in XLSX, scans checked (see expected_codes)


class Trap(NamedTuple):
    """A structural trap: the whole file is rejected (TEMPLATE_INVALID)."""

    build: Callable[[list[list[Cell]]], tuple[list[str], list[list[Cell]]]] | None  # None: the file is damaged
    says: tuple[str, ...]  # what the English message must contain (the column it names, what happened)
    says_id: tuple[str, ...] = ()  # and the Indonesian one


def expected_codes(row: TrapRow, typed_cells: bool) -> tuple[str, ...]:
    return tuple(c for c in row.reasons if typed_cells or c not in CELL_TYPE_CODES)


def _moved(rows: list[list[Cell]]) -> tuple[list[str], list[list[Cell]]]:
    """NAMA dragged to the end, its cells with it."""
    c = COL["NAMA"]
    h = list(HEADER)
    return h[:c] + h[c + 1:] + [h[c]], [list(r[:c]) + list(r[c + 1:]) + [r[c]] for r in rows]


def _cells_shifted(rows: list[list[Cell]]) -> tuple[list[str], list[list[Cell]]]:
    """The header is right, but in the third data row an empty cell was inserted before NAMA."""
    body = [list(r) for r in rows]
    c = COL["NAMA"]
    body[2] = body[2][:c] + [""] + body[2][c:]
    return list(HEADER), body


def _from_generator(name: str) -> Callable[[list[list[Cell]]], tuple[list[str], list[list[Cell]]]]:
    return lambda rows: template_traps(rows)[name]


# name -> the trap. A column that moved must be called shifted ("bergeser"), in both languages.
STRUCTURAL: dict[str, Trap] = {
    "missing column": Trap(_from_generator("missing_column"), ("JENIS_KELAMIN", "missing"), ("JENIS_KELAMIN",)),
    "extra column": Trap(_from_generator("extra_column"), ("NO_KK", "extra", "shifted"), ("NO_KK", "bergeser")),
    "renamed column": Trap(_from_generator("renamed_column"), ("NO_NIK", "2 (B)", "NIK"), ("NO_NIK", "2 (B)")),
    "two columns swapped": Trap(_from_generator("swapped_columns"), ("NAMA", "JENIS_KELAMIN", "shifted"),
                                ("NAMA", "bergeser")),
    "column moved to the end": Trap(_moved, ("NAMA", "shifted"), ("NAMA", "bergeser")),
    "cells shifted right in one row": Trap(_cells_shifted, ("shifted",), ("bergeser",)),
    "unreadable file": Trap(None, ("Save it again",), ("Simpan ulang",)),
}


class TrapList(NamedTuple):
    rows: list[TrapRow]
    scans: ScanSets  # the NIKs that have a KTP-el scan and a statement scan

    def cells(self) -> list[list[Cell]]:
        return [list(r.cells) for r in self.rows]

    def expected_rows(self, typed_cells: bool) -> list[tuple[int, str, tuple[str, ...]]]:
        """(row number as the team sees it, status, reason codes) for every row, scans checked."""
        out = []
        for i, r in enumerate(self.rows):
            codes = expected_codes(r, typed_cells)
            out.append((i + 2, verdict_of(codes), codes))
        return out


def _birth(cells: Sequence[Cell]) -> dt.date:
    d, m, y = (int(x) for x in str(cells[COL["TANGGAL_LAHIR"]]).split("-"))
    return dt.date(y, m, d)


def _with_nik(cells: list[Cell], prefix: str | None = None, birth: dt.date | None = None,
              sex: str | None = None, serial: int | None = None) -> list[Cell]:
    nik = str(cells[COL["NIK"]])
    birth = birth or _birth(cells)
    sex = sex or str(cells[COL["JENIS_KELAMIN"]])
    serial_ = nik[12:] if serial is None else serial
    cells[COL["NIK"]] = make_nik(prefix or nik[:6], birth, sex, serial_)  # type: ignore[arg-type]
    cells[COL["TANGGAL_LAHIR"]] = birth.strftime("%d-%m-%Y")
    return cells


def _serial(d: dt.date) -> int:
    """A spreadsheet's day number (1900 date system) for a date after February 1900."""
    return (d - dt.date(1899, 12, 30)).days


def build_traps(ctx: RuleContext, seed: int = 1) -> TrapList:
    """Good rows and one trap per row, for every row-level reason one list can provoke (every code in
    dukungan.reasons.ROW_CODES but NOT_FROM_ONE_LIST), several where a code has several causes.

    The layout (which row holds which trap) is the same for every seed; the people differ, so lists
    built with different seeds share no NIK and can be sent by different pairs of one election.
    """
    base = generate(ctx, 40, seed=seed, traps=False).rows
    fresh = iter([list(r) for r in base])
    vote = ctx.election.vote_date
    rows: list[TrapRow] = []
    no_scan = ("NO_KTP", "NO_STATEMENT")  # a NIK that cannot be read names no scan

    def add(name: str, cells: list[Cell], *reasons: str) -> list[Cell]:
        cells[COL["NO"]] = str(len(rows) + 1)
        rows.append(TrapRow(name, cells, sort_codes(reasons)))
        return cells

    def row(**over: Cell) -> list[Cell]:
        cells: list[Cell] = next(fresh)
        for k, v in over.items():
            cells[COL[k]] = v
        if not cells[COL["NO_HP"]]:
            cells[COL["NO_HP"]] = f"0857{seed % 1000:03d}{len(rows):05d}"
        return cells

    add("good", row())
    add("good: a retired civil servant may support", row(PEKERJAAN="PENSIUNAN PNS"))
    iso = row()
    iso[COL["TANGGAL_LAHIR"]] = _birth(iso).isoformat()
    add("good: birth date written YYYY-MM-DD", iso)
    numbers = row()
    numbers[COL["RT"]] = 4
    numbers[COL["NO_HP"]] = int(str(numbers[COL["NO_HP"]])[1:])  # a number cell drops the leading 0
    add("good: RT and phone as number cells, read without loss", numbers)

    nik = row()
    nik[COL["NIK"]] = str(nik[COL["NIK"]])[:15]
    add("NIK a digit short", nik, "NIK_FORMAT", *no_scan)
    nik = row()
    nik[COL["NIK"]] = str(nik[COL["NIK"]])[:12] + "O" + str(nik[COL["NIK"]])[13:]
    add("NIK with a letter O for a zero", nik, "NIK_FORMAT", *no_scan)
    nik = row()
    nik[COL["NIK"]] = str(nik[COL["NIK"]])[:6] + "32" + str(nik[COL["NIK"]])[8:]
    add("NIK birth day 32", nik, "NIK_DATE_INVALID")
    nik = row()
    nik[COL["NIK"]] = float(int(str(nik[COL["NIK"]])[:15]) * 10)  # the 15 digits a spreadsheet keeps
    add("NIK typed as a number (non-text cell)", nik, "NIK_AS_NUMBER", *no_scan)
    add("NIK serial 0000", _with_nik(row(), serial=0), "NIK_SERIAL_0000")
    add("NIK prefix in no code list", _with_nik(row(), prefix="990101"), "NIK_PREFIX_UNKNOWN")
    sex = row()
    sex[COL["JENIS_KELAMIN"]] = "P" if sex[COL["JENIS_KELAMIN"]] == "L" else "L"
    add("sex differs from the NIK", sex, "NIK_DOB_MISMATCH")

    village = row()
    here = str(village[COL["KODE_DESA"]])
    village[COL["KODE_DESA"]] = next(c for c in (here[:9] + f"{k:04d}" for k in range(9999, 0, -1))
                                     if c not in ctx.all_villages)
    add("village code altered", village, "REGION_CODE_INVALID")
    add("village code typed as a number, trailing zero lost (non-text cell)",
        row(KODE_DESA=float(ctx.election.region_code[:4])), "REGION_CODE_INVALID")
    outside = sorted(ctx.all_villages - ctx.region_villages)
    if not outside:
        raise ValueError("the code list has no village outside the election's region")
    add("lives outside the region", row(KODE_DESA=outside[seed % len(outside)]), "OUT_OF_REGION")
    young = vote.replace(year=vote.year - 15, day=min(vote.day, 28))
    add("under 17 and never married", _with_nik(row(STATUS_PERKAWINAN="B"), birth=young), "UNDERAGE")
    add("barred occupation", row(PEKERJAAN="ANGGOTA POLRI"), "PROHIBITED_OCCUPATION")

    add("name empty (required cell empty)", row(NAMA=""), "FIELD_INVALID")
    add("sex X", row(JENIS_KELAMIN="X"), "FIELD_INVALID")
    add("birth date not in the calendar", row(TANGGAL_LAHIR="31-02-1980"), "FIELD_INVALID")
    serial = row()
    serial[COL["TANGGAL_LAHIR"]] = _serial(_birth(serial))
    add("birth date a bare serial without a date style (non-text cell)", serial, "FIELD_INVALID")
    date_cell = row()
    date_cell[COL["TANGGAL_LAHIR"]] = _birth(date_cell)
    add("birth date a date cell, converted and flagged", date_cell, "DATE_FROM_SPREADSHEET")

    first = add("good: the first row of a NIK sent twice", row())
    add("the same supporter again", list(first), "DUP_INTERNAL")
    first = add("first row of a NIK sent again with other data", row(), "DUP_POTENTIAL")
    again = list(first)
    again[COL["NAMA"]] = f"{again[COL['NAMA']]} ALIAS"
    add("same NIK, other name", again, "DUP_INTERNAL", "DUP_POTENTIAL")
    phone = f"0813{seed % 1000:03d}99001"
    add("phone shared (1 of 2)", row(NO_HP=phone), "DUP_PHONE")
    add("phone shared (2 of 2), written +62", row(NO_HP=f"+62 {phone[1:4]}-{phone[4:8]}-{phone[8:]}"), "DUP_PHONE")
    lacks_ktp = add("no KTP-el scan", row(), "NO_KTP")
    lacks_statement = add("no statement scan", row(), "NO_STATEMENT")

    readable = {n for n in (r.cells[COL["NIK"]] for r in rows) if isinstance(n, str) and len(n) == 16 and n.isdigit()}
    return TrapList(rows, ScanSets(ktp=frozenset(readable - {lacks_ktp[COL["NIK"]]}),
                                   statement=frozenset(readable - {lacks_statement[COL["NIK"]]})))


# ---- what a sheet shows, and the three formats


def shown(value: Cell) -> str:
    """A cell as the sheet shows it, and so as a spreadsheet exports it to CSV (General format,
    DATE_SHOWN for dates): a number longer than 11 characters in scientific notation."""
    if isinstance(value, str):
        return value
    if isinstance(value, dt.date):
        return f"{value.day:02d}/{value.month:02d}/{value.year:04d}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if len(text) <= 11 else f"{value:.5E}"


def write_csv_export(path: Path, rows: Sequence[Sequence[Cell]], header: Sequence[str] = HEADER) -> None:
    """CSV UTF-8 as a spreadsheet exports it: byte order mark, CRLF, every cell as shown."""
    write_csv(path, [[shown(v) for v in r] for r in rows], header=header, bom=True)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))


def write_template_xlsx(path: Path, rows: Sequence[Sequence[Cell]], header: Sequence[str] = HEADER) -> None:
    """The blank template `unggah template` writes, filled in: typed cells are pasted values."""
    write_template(path, rows=len(rows) + 5)
    wb = openpyxl.load_workbook(path)
    ws = wb.active
    width = max(NCOLS, len(header), *(len(r) for r in rows))
    for c in range(width):
        ws.cell(row=1, column=c + 1).value = header[c] if c < len(header) else None
    for r, values in enumerate(rows, start=2):
        for c in range(width):
            v = values[c] if c < len(values) else None
            cell = ws.cell(row=r, column=c + 1)
            cell.value = None if v == "" else v
            if isinstance(v, dt.date):
                cell.number_format = DATE_SHOWN
    wb.save(path)


_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"


def write_saved_xlsx(path: Path, rows: Sequence[Sequence[Cell]], header: Sequence[str] = HEADER) -> None:
    """An XLSX as a spreadsheet program saves one: every text in a shared-strings table, numbers as
    plain values, dates as day serials styled with a date format, empty cells left out, a dimension."""
    strings: dict[str, int] = {}
    uses = 0
    lines = []
    width = 1
    for r, values in enumerate([list(header), *rows], start=1):
        cells = []
        for c, v in enumerate(values):
            ref = f"{col_letter(c)}{r}"
            if isinstance(v, str):
                if v == "":
                    continue
                uses += 1
                cells.append(f'<c r="{ref}" t="s"><v>{strings.setdefault(v, len(strings))}</v></c>')
            elif isinstance(v, dt.date):
                cells.append(f'<c r="{ref}" s="1"><v>{_serial(v)}</v></c>')
            else:
                num = int(v) if isinstance(v, float) and v.is_integer() else v
                cells.append(f'<c r="{ref}"><v>{num!r}</v></c>')
            width = max(width, c + 1)
        lines.append(f'<row r="{r}">{"".join(cells)}</row>')
    sheet = (f'<worksheet xmlns="{_MAIN}" xmlns:r="{_REL}"><dimension ref="A1:{col_letter(width - 1)}{len(lines)}"/>'
             f'<sheetViews><sheetView workbookViewId="0"/></sheetViews><sheetFormatPr defaultRowHeight="15"/>'
             f'<sheetData>{"".join(lines)}</sheetData></worksheet>')
    keep = ' xml:space="preserve"'  # white space at an end of a text is kept only with it
    sst = "".join(f"<si><t{keep if s != s.strip() else ''}>{escape(s)}</t></si>" for s in strings)
    parts = {
        "[Content_Types].xml":
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/>'
            f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/></Types>',
        "_rels/.rels":
            f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" Type="{_REL}/officeDocument" '
            'Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml":
            f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><bookViews><workbookView/></bookViews>'
            '<sheets><sheet name="B.1.1-KWK" sheetId="1" r:id="rId1"/></sheets></workbook>',
        "xl/_rels/workbook.xml.rels":
            f'<Relationships xmlns="{_PKG}">'
            f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{_REL}/styles" Target="styles.xml"/>'
            f'<Relationship Id="rId3" Type="{_REL}/sharedStrings" Target="sharedStrings.xml"/></Relationships>',
        "xl/styles.xml":
            f'<styleSheet xmlns="{_MAIN}"><numFmts count="1"><numFmt numFmtId="164" formatCode="{DATE_SHOWN}"/>'
            '</numFmts><fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
            '<fills count="2"><fill><patternFill patternType="none"/></fill>'
            '<fill><patternFill patternType="gray125"/></fill></fills>'
            '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
            '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
            '<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
            '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
            '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles></styleSheet>',
        "xl/sharedStrings.xml": f'<sst xmlns="{_MAIN}" count="{uses}" uniqueCount="{len(strings)}">{sst}</sst>',
        "xl/worksheets/sheet1.xml": sheet,
    }
    decl = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, xml in parts.items():
            z.writestr(name, decl + xml)


def _utf16(data: bytes) -> bytes:
    """The same sheet saved as 'Unicode Text': UTF-16, which no CSV reader here accepts."""
    return data.decode("utf-8-sig").encode("utf-16")


def _truncated(data: bytes) -> bytes:
    """A download or a copy cut off halfway."""
    return data[: len(data) // 2]


class Format(NamedTuple):
    suffix: str
    write: Callable[..., None]  # (path, rows, header=HEADER)
    typed_cells: bool  # whether the file keeps a cell's type (else it holds what the sheet showed)
    damage: Callable[[bytes], bytes]  # the "unreadable file" trap, from a good file of this format


FORMATS: dict[str, Format] = {
    "csv": Format(".csv", write_csv_export, False, _utf16),
    "xlsx from the template": Format(".xlsx", write_template_xlsx, True, _truncated),
    "xlsx saved by a spreadsheet program": Format(".xlsx", write_saved_xlsx, True, _truncated),
}

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(120)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\ntrailer << >>\n%%EOF\n"


class TrapSet(NamedTuple):
    fmt: str
    traps: TrapList
    list_path: Path
    scan_dir: Path  # <NIK>_ktp.jpg and <NIK>_pernyataan.pdf for every NIK in traps.scans
    structural: dict[str, Path]  # STRUCTURAL name -> file

    def expected_rows(self) -> list[tuple[int, str, tuple[str, ...]]]:
        return self.traps.expected_rows(FORMATS[self.fmt].typed_cells)


def scan_files(scans: ScanSets) -> list[tuple[str, bytes]]:
    return ([(f"{n}_ktp.jpg", JPEG) for n in sorted(scans.ktp)]
            + [(f"{n}_pernyataan.pdf", PDF) for n in sorted(scans.statement)])


def write_trap_set(folder: Path, ctx: RuleContext, fmt: str, seed: int = 1) -> TrapSet:
    """Everything one judge needs for format `fmt`: the trap list, its scans, the structural traps."""
    f = FORMATS[fmt]
    traps = build_traps(ctx, seed)
    folder.mkdir(parents=True, exist_ok=True)
    list_path = folder / f"daftar{f.suffix}"
    f.write(list_path, traps.cells())
    scan_dir = folder / "scans"
    scan_dir.mkdir(exist_ok=True)
    for name, data in scan_files(traps.scans):
        (scan_dir / name).write_bytes(data)
    structural = {}
    for name, trap in STRUCTURAL.items():
        p = folder / f"{name.replace(' ', '-')}{f.suffix}"
        if trap.build is None:
            p.write_bytes(f.damage(list_path.read_bytes()))
        else:
            header, rows = trap.build(traps.cells())
            f.write(p, rows, header=header)
        structural[name] = p
    return TrapSet(fmt, traps, list_path, scan_dir, structural)
