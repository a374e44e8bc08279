"""The supporter-list template (B.1.1-KWK, reconstructed) and parsing CSV/XLSX into columns.

Parsing is columnar: a file becomes one list of strings per column, because
the validator works column by column (see rules.py). Structure problems
reject the whole file with TemplateError (reason TEMPLATE_INVALID) and a
message that names the column, the position and what to do.

Column order is our reconstruction; the official SILON order is unverified.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import posixpath
import re
import zipfile
from bisect import bisect_left
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

import msgspec

from .gcpause import paused_gc

HEADER: tuple[str, ...] = ("NO", "NIK", "NAMA", "JENIS_KELAMIN", "TEMPAT_LAHIR", "TANGGAL_LAHIR",
                           "STATUS_PERKAWINAN", "PEKERJAAN", "ALAMAT", "RT", "RW", "KODE_DESA", "NO_HP")
NCOLS = len(HEADER)
# Columns whose value a spreadsheet changes when the cell is not text (lost digits, lost
# zeros, a serial): parse_xlsx turns such a cell into a row verdict or a flagged conversion.
TEXT_ONLY = ("NIK", "TANGGAL_LAHIR", "KODE_DESA")
MAX_CELL_CHARS = 1000


def col_letter(index0: int) -> str:
    s, n = "", index0 + 1
    while n:
        n, r = divmod(n - 1, 26)
        s = chr(65 + r) + s
    return s


class TemplateError(ValueError):
    """The file does not follow the template; the whole file is rejected (TEMPLATE_INVALID)."""

    code = "TEMPLATE_INVALID"

    def __init__(self, message_id: str, message_en: str, problems: list[str] | None = None) -> None:
        super().__init__(message_en)
        self.message_id = message_id
        self.message_en = message_en
        self.problems = problems or []

    def __str__(self) -> str:
        extra = "".join(f"\n  - {p}" for p in self.problems)
        return f"TEMPLATE_INVALID: {self.message_id} / {self.message_en}{extra}"


class Table(msgspec.Struct):
    """A parsed supporter list, one list per column (all the same length)."""

    source: str  # "csv" or "xlsx"
    row_no: list[int]  # line (CSV) or sheet row (XLSX) of each row, 1-based; header is row 1
    no: list[str]
    nik: list[str]
    nama: list[str]
    jenis_kelamin: list[str]
    tempat_lahir: list[str]
    tanggal_lahir: list[str]
    status_perkawinan: list[str]
    pekerjaan: list[str]
    alamat: list[str]
    rt: list[str]
    rw: list[str]
    kode_desa: list[str]
    no_hp: list[str]
    # Row indices whose NIK was a numeric cell in XLSX (digits lost whatever the text says now).
    nik_numeric: frozenset[int] = frozenset()
    # Row indices whose TANGGAL_LAHIR was a date cell in XLSX (a serial with a date style):
    # read as the date the sheet shows, and flagged, never a reason to reject the list.
    date_from_sheet: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.nik)

    def column(self, name: str) -> list[str]:
        return getattr(self, name.lower())

    def row(self, i: int) -> tuple[str, ...]:
        return tuple(getattr(self, h.lower())[i] for h in HEADER)


def _table(source: str, cols: list[list[str]], row_no: list[int], **kw) -> Table:
    return Table(source, row_no, *cols, **kw)


def _header_problem(got: list[str]) -> TemplateError | None:
    got = [g.strip().lstrip("\ufeff").strip() for g in got]
    while got and got[-1] == "":
        got.pop()
    if got == list(HEADER):
        return None
    if not got:
        return TemplateError("Baris pertama (judul kolom) kosong.", "The first row (the header) is empty.")
    exp = list(HEADER)
    for i in range(max(len(got), len(exp))):
        g = got[i] if i < len(got) else None
        x = exp[i] if i < len(exp) else None
        if g == x:
            continue
        pos = f"{i + 1} ({col_letter(i)})"
        if sorted(got) == sorted(exp):  # every column is there: one moved, or two swapped
            return _moved_problem(got, exp, i)
        if x is None:
            return TemplateError(f"Kolom ke-{pos} '{g}' tidak ada dalam templat; hapus kolom itu.",
                                 f"Column {pos} '{g}' is not in the template; delete that column.")
        if g is None or got[i:] == exp[i + 1:len(got) + 1]:
            return TemplateError(
                f"Kolom {x} (seharusnya kolom ke-{pos}) hilang; kolom sesudahnya bergeser ke kiri. "
                "Gunakan templat kosong dari 'unggah template'.",
                f"Column {x} (expected at position {pos}) is missing; the columns after it shifted left. "
                "Start from the blank template ('unggah template').")
        if got[i + 1:] == exp[i:len(got) - 1]:
            return TemplateError(
                f"Ada kolom tambahan '{g}' di posisi {pos} sebelum kolom {x}; kolom sesudahnya bergeser ke kanan.",
                f"An extra column '{g}' at position {pos} before {x}; the columns after it shifted right.")
        return TemplateError(
            f"Kolom ke-{pos} seharusnya {x}, tetapi berjudul '{g}'. Judul kolom harus persis: {', '.join(exp)}.",
            f"Column {pos} must be {x} but is headed '{g}'. The header must be exactly: {', '.join(exp)}.")
    return None


def _moved_problem(got: list[str], exp: list[str], i: int) -> TemplateError:
    """Every column is there, in another order: a column dragged elsewhere in a spreadsheet, or two
    swapped. Say which moved and where it belongs, so the team puts it back instead of retyping."""
    x, g = exp[i], got[i]
    j = got.index(x)
    at = lambda k: f"{k + 1} ({col_letter(k)})"  # noqa: E731
    order = ", ".join(exp)
    rest = lambda cols, skip: [c for c in cols if c not in skip]  # noqa: E731
    if exp[j] == g and rest(got, (x, g)) == rest(exp, (x, g)):
        return TemplateError(
            f"Kolom {x} dan {g} tertukar: kolom ke-{at(i)} seharusnya {x} dan kolom ke-{at(j)} seharusnya {g}; "
            f"isinya bergeser ke kolom yang salah. Tukar kembali kedua kolom itu. Urutan judul: {order}.",
            f"Columns {x} and {g} are swapped: position {at(i)} must be {x} and position {at(j)} must be {g}; "
            f"their data is shifted into the wrong columns. Swap them back. The header order is: {order}.")
    moved = next((c for c in got if rest(got, (c,)) == rest(exp, (c,))), None)
    if moved is not None:
        a, b = exp.index(moved), got.index(moved)
        return TemplateError(
            f"Kolom {moved} dipindah dari kolom ke-{at(a)} ke kolom ke-{at(b)}; kolom di antaranya bergeser. "
            f"Kembalikan {moved} ke kolom ke-{at(a)}. Urutan judul: {order}.",
            f"Column {moved} was moved from position {at(a)} to position {at(b)}; the columns between shifted. "
            f"Move {moved} back to position {at(a)}. The header order is: {order}.")
    return TemplateError(
        f"Semua kolom ada, tetapi urutannya bergeser: kolom ke-{at(i)} berisi {g}, seharusnya {x}. "
        f"Urutan judul harus persis: {order}.",
        f"Every column is there, but the order is shifted: position {at(i)} holds {g} where {x} belongs. "
        f"The header order must be exactly: {order}.")


def _check_sizes(cols: list[list[str]], row_no: list[int]) -> None:
    for c, col in enumerate(cols):
        if col and max(map(len, col)) > MAX_CELL_CHARS:
            i = next(i for i, v in enumerate(col) if len(v) > MAX_CELL_CHARS)
            raise TemplateError(
                f"Sel {col_letter(c)}{row_no[i]} ({HEADER[c]}) berisi {len(col[i])} karakter; "
                f"batas {MAX_CELL_CHARS}. Periksa apakah isi sel tertempel salah.",
                f"Cell {col_letter(c)}{row_no[i]} ({HEADER[c]}) holds {len(col[i])} characters; the limit "
                f"is {MAX_CELL_CHARS}. Check for a paste gone wrong.")


def _sniff_binary(data: bytes) -> None:
    if not data.replace(b"\xef\xbb\xbf", b"", 1).strip():
        raise TemplateError("Berkas kosong.", "The file is empty.")
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TemplateError("Berkas tersimpan sebagai UTF-16 (Unicode Text). Simpan ulang sebagai 'CSV UTF-8'.",
                            "The file is UTF-16 ('Unicode Text'). Save it again as 'CSV UTF-8 (comma delimited)'.")
    if head.startswith(b"PK\x03\x04"):
        raise TemplateError("Berkas ini XLSX/ZIP tetapi bernama .csv; beri nama .xlsx.",
                            "This file is XLSX/ZIP but named .csv; name it .xlsx.")
    if b"\x00" in head:
        raise TemplateError("Berkas biner, bukan CSV teks. Unggah CSV UTF-8 atau XLSX dari templat.",
                            "This is a binary file, not CSV text. Upload CSV UTF-8 or the XLSX template.")


# ASCII characters other than space, tab and newline that str.strip() removes.
_OTHER_ASCII_SPACE = "".join(c for c in map(chr, range(128)) if c.isspace() and c not in " \t\n\r")


def parse_csv_bytes(data: bytes) -> Table:
    """CSV, UTF-8 with or without BOM; comma or (Indonesian-locale Excel) semicolon separated."""
    _sniff_binary(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TemplateError(
            f"Berkas bukan UTF-8 (byte 0x{data[e.start]:02X} di baris {line}). Simpan sebagai 'CSV UTF-8'.",
            f"The file is not UTF-8 (byte 0x{data[e.start]:02X} on line {line}). Save it as 'CSV UTF-8 "
            "(comma delimited)'; older 'CSV' exports use a Windows code page.") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    first, _, body = text.partition("\n")
    delim = ";" if first.count(";") > first.count(",") else ","
    try:
        header = next(csv.reader([first], delimiter=delim), [])
    except csv.Error as e:  # e.g. a header cell over the csv module's 128 KiB field limit
        raise TemplateError(f"Baris judul kolom (baris 1) rusak: {e}. Pakai judul dari templat.",
                            f"The header line (line 1) is malformed: {e}. Use the template's column names.") from None
    problem = _header_problem(header)
    if problem:
        raise problem
    body = body.rstrip("\n")
    if not body.strip():
        raise TemplateError("Berkas hanya berisi judul kolom, tanpa data.", "The file has a header but no rows.")
    cols = None
    if '"' not in body and "\x00" not in body:
        # Fast path: no quoting. A NUL sentinel field is put between lines so
        # that one split of the whole body gives every cell, and a row with
        # too few or too many cells shows up as a sentinel out of place.
        n = body.count("\n") + 1
        flat = body.replace("\n", delim + "\x00" + delim).split(delim)
        stride = NCOLS + 1
        if len(flat) == n * stride - 1 and flat[NCOLS::stride].count("\x00") == n - 1:
            cols = [flat[c::stride] for c in range(NCOLS)]
            del flat
            row_no = list(range(2, n + 2))
            # A line no longer than the cell limit cannot hold a too-long cell.
            if max(map(len, body.split("\n"))) > MAX_CELL_CHARS:
                _check_sizes(cols, row_no)
            # Other whitespace str.strip() removes (no-break space and the like, form feed...)
            # strips every cell too, so a cell reads the same whatever else the file holds.
            needs_strip = (" " + delim in body or delim + " " in body or "\t" in body
                           or " \n" in body or "\n " in body or body[:1] == " " or body[-1:] == " "
                           or not body.isascii() or any(c in body for c in _OTHER_ASCII_SPACE))
    if cols is None:
        cols, row_no = _slow_csv(first, body, delim)
        needs_strip = True
        _check_sizes(cols, row_no)
    if needs_strip:
        cols = [list(map(str.strip, col)) for col in cols]
    return _table("csv", cols, row_no)


def _slow_csv(first: str, body: str, delim: str) -> tuple[list[list[str]], list[int]]:
    rows: list[list[str]] = []
    row_no: list[int] = []
    reader = csv.reader(io.StringIO(body), delimiter=delim, strict=False)
    try:
        for rec in reader:
            line = reader.line_num + 1
            if not any(c.strip() for c in rec):
                continue
            if len(rec) > NCOLS:
                extra = [i for i in range(NCOLS, len(rec)) if rec[i].strip()]
                if extra:
                    i = extra[0]
                    raise TemplateError(
                        f"Baris {line} punya isi di kolom ke-{i + 1} ({col_letter(i)}), di luar templat "
                        f"({NCOLS} kolom): ada sel yang bergeser ke kanan.",
                        f"Line {line} has a value in column {i + 1} ({col_letter(i)}), beyond the template's "
                        f"{NCOLS} columns: cells shifted right.")
                rec = rec[:NCOLS]
            elif len(rec) < NCOLS:
                rec = rec + [""] * (NCOLS - len(rec))
            rows.append(rec)
            row_no.append(line)
    except csv.Error as e:
        raise TemplateError(f"CSV rusak di sekitar baris {reader.line_num + 1}: {e}.",
                            f"Malformed CSV near line {reader.line_num + 1}: {e}.") from None
    if not rows:
        raise TemplateError("Berkas hanya berisi judul kolom, tanpa data.", "The file has a header but no rows.")
    return [list(c) for c in zip(*rows)], row_no


def _num_text(v: float | int) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


# An XLSX member larger than this that unpacks to more than BOMB_RATIO times its packed size is
# refused unread. Real sheets pack about 5-20x; a file of 1 MB that unpacks to 1 GB of padding
# would otherwise hold a validator's memory and time (and a larger one exhaust it).
BOMB_MIN_BYTES = 64 * 1024 * 1024
BOMB_RATIO = 200


def _bytes_of(source: str | Path | bytes) -> bytes:
    """A sheet's bytes: given as they are (a stored upload, read through its blob store) or read
    from a file. The bytes, never the name, say what a file is: the server stores uploads under
    their id, with no extension."""
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _refuse_zip_bomb(data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.file_size > BOMB_MIN_BYTES and info.file_size > BOMB_RATIO * max(info.compress_size, 1):
                raise TemplateError(
                    f"Berkas XLSX ini mengembang dari {info.compress_size:,} menjadi {info.file_size:,} byte "
                    f"({info.filename}): ditolak. Simpan ulang lembar kerjanya sebagai .xlsx atau CSV UTF-8.",
                    f"This XLSX unpacks from {info.compress_size:,} to {info.file_size:,} bytes ({info.filename}): "
                    "refused unread. Save the sheet again as .xlsx or CSV UTF-8.")


def parse_xlsx(source: str | Path | bytes, *, slow_reader: Callable[[bytes], Table] | None = None) -> Table:
    """First worksheet of an XLSX, read with calamine (Rust), whatever the file is named.

    Cell types matter: see TEXT_ONLY. The Table is the one _parse_xlsx_openpyxl (the reader up to
    issue 19, 12-20x slower) gives, cell for cell: same text, row numbers, flags and refusals.
    Where calamine cannot tell what openpyxl saw (an error cell such as #N/A reads as empty), the
    file goes to that reader (`slow_reader`, given its bytes; a test passes its own to see which).
    """
    import python_calamine as pc

    try:
        data = _bytes_of(source)
        _refuse_zip_bomb(data)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if "xl/workbook.xml" not in z.NameToInfo:
                # calamine would read an ODS or XLSB zip too; openpyxl, and so the template, does not.
                raise KeyError("no xl/workbook.xml")
        wb = pc.CalamineWorkbook.from_filelike(io.BytesIO(data))
    except BaseException as e:
        if isinstance(e, TemplateError) or not _is_read_error(e):
            raise
        raise TemplateError(f"Bukan berkas XLSX yang sah ({type(e).__name__}). Simpan ulang sebagai .xlsx.",
                            f"Not a valid XLSX file ({type(e).__name__}: {e}). Save it again as .xlsx.") from None
    try:
        # openpyxl's worksheets[0]: the first sheet that is not a chart sheet.
        index = next((i for i, m in enumerate(wb.sheets_metadata) if m.typ != pc.SheetTypeEnum.ChartSheet), None)
        if index is None:
            raise TemplateError("Lembar kerja pertama kosong.", "The first worksheet is empty.")
        # calamine reads all of the sheet data, whatever its (possibly stale or forged) <dimension> says.
        sheet = wb.get_sheet_by_index(index)
        start = sheet.start
        if start is None:  # no cell with a value
            raise TemplateError("Lembar kerja pertama kosong.", "The first worksheet is empty.")
        header, raw_cols = _columns(sheet)
        del sheet
    except BaseException as e:
        if isinstance(e, TemplateError) or not _is_read_error(e):
            raise
        # A sheet whose XML is damaged, or hostile (calamine expands no entities).
        raise TemplateError(f"Isi berkas XLSX rusak ({type(e).__name__}). Simpan ulang sebagai .xlsx.",
                            f"The XLSX file's content is damaged ({type(e).__name__}: {str(e)[:200]}). "
                            "Save it again as .xlsx.") from None
    finally:
        wb.close()
    cells = _XlsxCells(raw_cols)
    # Two cells calamine reads as "" where openpyxl read text, and so the sheets read again the slow
    # way: an error cell (#N/A, #REF!...), looked for only when a cell reads as "", and a cell of
    # white space without xml:space="preserve", which only a cell beyond the template can tell
    # apart (a refused list whatever the other cells are, with openpyxl).
    if (("" in header or cells.has_empty) and _sheet_xml_holds(data, _ERROR_TYPE)
            or len(raw_cols) > NCOLS and _sheet_xml_holds(data, _BARE_WHITE_SPACE, "xl/sharedStrings.xml")):
        return (slow_reader or _parse_xlsx_openpyxl)(data)
    # The data starts at `start` (row, column), 0-based. The header must fill A1:M1, so data that
    # starts elsewhere has a header problem: the one openpyxl saw, reading from A1.
    if start != (0, 0):
        header = [] if start[0] > 0 else [""] * start[1] + header
    problem = _header_problem([_header_text(v) for v in header])
    if problem:
        raise problem
    if start != (0, 0):  # unreachable: a header in A1:M1 puts the top left cell at A1
        raise TemplateError("Baris pertama (judul kolom) kosong.", "The first row (the header) is empty.")
    return cells.table()


def _is_read_error(e: BaseException) -> bool:
    import python_calamine as pc

    # A Rust panic inside calamine reaches Python as pyo3's PanicException, a BaseException.
    return (isinstance(e, (pc.CalamineError, zipfile.BadZipFile, EOFError, KeyError, IndexError, OSError, ValueError))
            or type(e).__name__ == "PanicException")


_CHUNK_ROWS = 65536


def _columns(sheet) -> tuple[list[object], list[list[object]]]:
    """The sheet's first row and the other rows as columns, from its top left cell on."""
    width = sheet.width
    # One Python list per row: a million of them set off the cyclic garbage collector again and
    # again (about 7 s instead of 2 s at 1.2 million rows, making the rows and turning them
    # into columns); see gcpause.
    with paused_gc():
        rows = sheet.to_python()
        cols: list[list[object]] = [[] for _ in range(width)]
        header = list(rows[0]) if rows else []
        for k in range(1, len(rows), _CHUNK_ROWS):
            chunk = rows[k:k + _CHUNK_ROWS]
            if any(len(r) != width for r in chunk):  # calamine makes every row the sheet's width
                chunk = [list(r) + [""] * (width - len(r)) for r in chunk]
            for col, part in zip(cols, zip(*chunk)):
                col.extend(part)
        del rows
    return header, cols


def _header_text(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return _num_text(v)
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        v = dt.datetime(v.year, v.month, v.day)
    return str(v)


def _cell_texts(raw: list[object], c: int, flagged: list[int]) -> list[str]:
    """One column's cells as text, as _parse_xlsx_openpyxl makes them; appends to `flagged` the rows
    whose NIK is a number or whose TANGGAL_LAHIR is a date cell."""
    try:
        return list(map(str.strip, raw))  # every cell text: the usual case
    except TypeError:
        pass
    nik_c, date_c = HEADER.index("NIK"), HEADER.index("TANGGAL_LAHIR")
    out: list[str] = []
    add = out.append
    for i, v in enumerate(raw):
        if isinstance(v, str):
            add(v.strip())
        elif c == nik_c and isinstance(v, (int, float)):  # a bool too, as openpyxl's reading had it
            flagged.append(i)
            add(_num_text(v))
        elif c == date_c and isinstance(v, dt.date):  # a date, or a datetime when the serial has a time
            flagged.append(i)
            add(f"{v.day:02d}-{v.month:02d}-{v.year:04d}")
        elif isinstance(v, (dt.datetime, dt.time)):
            add(v.isoformat())
        elif isinstance(v, dt.date):  # calamine's whole-day serial, a datetime in openpyxl's reading
            add(dt.datetime(v.year, v.month, v.day).isoformat())
        elif isinstance(v, (int, float)):
            add(_num_text(v))
        else:  # a duration ([h]:mm)
            add(str(v))
    return out


class _XlsxCells:
    """The data rows (sheet row 2 on), one list of values per sheet column, as text."""

    def __init__(self, raw_cols: list[list[object]]) -> None:
        self.raw = raw_cols
        self.n = len(raw_cols[0]) if raw_cols else 0
        self.flags: list[list[int]] = [[] for _ in raw_cols]
        self.texts = [_cell_texts(raw, c, self.flags[c]) for c, raw in enumerate(raw_cols)]
        # Lengths once: the blank-row, size and empty-cell checks all read them (one pass over
        # a million strings scattered in memory costs about 0.1 s a column).
        self.lens = [list(map(len, t)) for t in self.texts]
        self.blanks = [x.count(0) for x in self.lens]
        self.has_empty = any(self.blanks)

    def table(self) -> Table:
        n, texts, lens = self.n, self.texts, self.lens
        # A row is blank when every cell is empty or white space; a cell that is not text never is.
        blank: list[int] = []
        if n and min(self.blanks):
            k = self.blanks.index(min(self.blanks))
            blank = [i for i, x in enumerate(lens[k]) if not x and not any(t[i] for t in lens)]
        blank_set = set(blank)
        # A value beyond the template in a row that is not blank: the first such row, its first such cell.
        beyond = []
        for c in range(NCOLS, len(self.raw)):
            raw = self.raw[c]
            if raw.count("") != n:
                i = next((i for i, v in enumerate(raw) if v != "" and i not in blank_set), None)
                if i is not None:
                    beyond.append((i, c))
        if beyond:
            i, c = min(beyond)
            r = i + 2
            raise TemplateError(
                f"Baris {r} punya isi di sel {col_letter(c)}{r}, di luar templat: ada sel yang bergeser.",
                f"Row {r} has a value in cell {col_letter(c)}{r}, beyond the template: cells shifted.")
        cols = texts[:NCOLS]
        nik_numeric, date_from_sheet = self.flags[HEADER.index("NIK")], self.flags[HEADER.index("TANGGAL_LAHIR")]
        if blank:
            keep = [i for i in range(n) if i not in blank_set]
            cols = [[col[i] for i in keep] for col in cols]
            row_no = [i + 2 for i in keep]
            # Flagged cells are numbers or dates, never in a blank row.
            nik_numeric = [i - bisect_left(blank, i) for i in nik_numeric]
            date_from_sheet = [i - bisect_left(blank, i) for i in date_from_sheet]
        else:
            row_no = list(range(2, n + 2))
        if not row_no:
            raise TemplateError("Berkas hanya berisi judul kolom, tanpa data.", "The file has a header but no rows.")
        if any(x and max(x) > MAX_CELL_CHARS for x in lens[:NCOLS]):
            _check_sizes(cols, row_no)
        return _table("xlsx", cols, row_no, nik_numeric=frozenset(nik_numeric),
                      date_from_sheet=frozenset(date_from_sheet))


def _first_sheet_member(z: zipfile.ZipFile) -> str | None:
    """The zip member holding the first worksheet (workbook order, chart sheets skipped), or None."""
    try:
        book = ElementTree.fromstring(z.read("xl/workbook.xml"))
        rels = ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels"))
    except (KeyError, ElementTree.ParseError, OSError, ValueError, zipfile.BadZipFile):
        return None
    target = {r.get("Id"): (r.get("Target") or "", r.get("Type") or "") for r in rels}
    for s in book.iter():
        if s.tag.rsplit("}", 1)[-1] != "sheet":
            continue
        rid = next((v for k, v in s.attrib.items() if k.rsplit("}", 1)[-1] == "id"), None)
        name, kind = target.get(rid, ("", ""))
        if not name or kind.endswith("/chartsheet"):
            continue
        return posixpath.normpath(name.lstrip("/") if name.startswith("/") else "xl/" + name)
    return None


# A cell of type error, t="e" as every writer we know puts it (a regex with a literal start is the
# cheapest search of the sheet XML: about 0.3 s for 1.2 million rows, besides 1.2 s to inflate it).
_ERROR_TYPE = re.compile(rb"""t=["']e["']""")
# Text of white space only, without xml:space="preserve": calamine drops it.
_BARE_WHITE_SPACE = re.compile(rb"<(?:\w+:)?t>[ \t\r\n]+</(?:\w+:)?t>")


def _sheet_xml_holds(data: bytes, pattern: re.Pattern, *also: str) -> bool:
    """Whether the first worksheet's XML (or the members `also`) matches `pattern`; when unsure, True."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            member = _first_sheet_member(z)
            if member not in z.NameToInfo:
                return True
            for name in (member, *(m for m in also if m in z.NameToInfo)):
                with z.open(name) as f:
                    tail = b""
                    while chunk := f.read(1 << 22):
                        if pattern.search(chunk) or pattern.search(tail + chunk[:256]):
                            return True
                        tail = chunk[-256:]
    except Exception:  # noqa: BLE001 - the openpyxl reader then says what is wrong
        return True
    return False


def _parse_xlsx_openpyxl(source: str | Path | bytes) -> Table:
    """The openpyxl reader (read-only mode) parse_xlsx replaced: about 6,600 rows/s. Kept for the sheets
    parse_xlsx hands over (error cells, white space beyond the template) and for the comparison in
    loadtest/bench_validate.py --xlsx. Cell types matter: see TEXT_ONLY."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        data = _bytes_of(source)
        _refuse_zip_bomb(data)
        # The bytes, never the name: given a name, openpyxl judges the file by its extension, and
        # the server stores uploads under their id, with none. So every XLSX list was "not a
        # supported format" on the server while `unggah check` read it. In memory, because a
        # file object handed over stays open after wb.close() (the zip was not opened by name).
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, ElementTree.ParseError, KeyError, OSError, ValueError) as e:
        if isinstance(e, TemplateError):
            raise
        raise TemplateError(f"Bukan berkas XLSX yang sah ({type(e).__name__}). Simpan ulang sebagai .xlsx.",
                            f"Not a valid XLSX file ({type(e).__name__}: {e}). Save it again as .xlsx.") from None
    try:
        ws = wb.worksheets[0]
        # Read to the sheet's real end: the <dimension> tag a file carries may be stale (or
        # forged), and read-only mode would silently stop at the rows and columns it names.
        ws.reset_dimensions()
        it = ws.iter_rows(values_only=True)
        header = next(it, None)
        if header is None:
            raise TemplateError("Lembar kerja pertama kosong.", "The first worksheet is empty.")
        problem = _header_problem(["" if v is None else str(v) for v in header])
        if problem:
            raise problem
        rows: list[list[str]] = []
        row_no: list[int] = []
        nik_numeric: set[int] = set()
        date_from_sheet: set[int] = set()
        nik_c, date_c, code_c = (HEADER.index(h) for h in TEXT_ONLY)
        for r, values in enumerate(it, start=2):
            if values is None or all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
                continue
            if len(values) > NCOLS and any(v not in (None, "") for v in values[NCOLS:]):
                i = next(i for i in range(NCOLS, len(values)) if values[i] not in (None, ""))
                raise TemplateError(
                    f"Baris {r} punya isi di sel {col_letter(i)}{r}, di luar templat: ada sel yang bergeser.",
                    f"Row {r} has a value in cell {col_letter(i)}{r}, beyond the template: cells shifted.")
            rec: list[str] = []
            for c in range(NCOLS):
                v = values[c] if c < len(values) else None
                if v is None:
                    rec.append("")
                elif isinstance(v, str):
                    rec.append(v.strip())
                elif c == nik_c and isinstance(v, (int, float)):
                    nik_numeric.add(len(rows))
                    rec.append(_num_text(v))
                elif c == date_c and isinstance(v, (dt.datetime, dt.date)):
                    # A serial with a date style: openpyxl gives the date the sheet shows. That
                    # loses nothing, so the row keeps it, as text, with a flag saying so.
                    date_from_sheet.add(len(rows))
                    rec.append(f"{v.day:02d}-{v.month:02d}-{v.year:04d}")
                elif isinstance(v, (dt.datetime, dt.date, dt.time)):
                    rec.append(v.isoformat())
                else:
                    # A bare number in TANGGAL_LAHIR (a serial without a date style) or in
                    # KODE_DESA (trailing zeros lost) becomes its text and is judged on its row
                    # (FIELD_INVALID, REGION_CODE_INVALID), as the same text in a CSV is.
                    rec.append(_num_text(v) if isinstance(v, (int, float)) else str(v))
            rows.append(rec)
            row_no.append(r)
    except (ElementTree.ParseError, zipfile.BadZipFile, EOFError, KeyError, OSError) as e:
        # A sheet whose XML is damaged, or hostile (entity expansion is refused by the parser).
        raise TemplateError(f"Isi berkas XLSX rusak ({type(e).__name__}). Simpan ulang sebagai .xlsx.",
                            f"The XLSX file's content is damaged ({type(e).__name__}: {str(e)[:200]}). "
                            "Save it again as .xlsx.") from None
    finally:
        wb.close()
    if not rows:
        raise TemplateError("Berkas hanya berisi judul kolom, tanpa data.", "The file has a header but no rows.")
    cols = [list(c) for c in zip(*rows)]
    _check_sizes(cols, row_no)
    return _table("xlsx", cols, row_no, nik_numeric=frozenset(nik_numeric), date_from_sheet=frozenset(date_from_sheet))


def read_table(path: str | Path) -> Table:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise TemplateError(f"Berkas tidak ditemukan: {p.name}", f"File not found: {p.name}") from None
    if p.suffix.lower() in (".xlsx", ".xlsm") or head.startswith(b"PK\x03\x04"):
        return parse_xlsx(p)
    if p.suffix.lower() == ".xls":
        raise TemplateError("Format .xls (Excel 97-2003) tidak diterima; simpan sebagai .xlsx atau CSV UTF-8.",
                            "Old .xls files are not accepted; save as .xlsx or CSV UTF-8.")
    return parse_csv_bytes(p.read_bytes())


def write_template(path: str | Path, rows: int = 2000) -> None:
    """A blank XLSX template: exact header, data cells formatted as text (@), header locked.

    Columns carry a text style so cells typed past `rows` are text too; the
    first `rows` rows are also formatted cell by cell, because some
    spreadsheet programs ignore column styles on paste.
    """
    import openpyxl
    from openpyxl.styles import Font, PatternFill, Protection
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "B.1.1-KWK"
    ws.append(list(HEADER))
    widths = {"NIK": 20, "NAMA": 30, "TEMPAT_LAHIR": 18, "TANGGAL_LAHIR": 15, "PEKERJAAN": 22,
              "ALAMAT": 36, "KODE_DESA": 16, "NO_HP": 16, "JENIS_KELAMIN": 15, "STATUS_PERKAWINAN": 19}
    unlocked = Protection(locked=False)
    for c, name in enumerate(HEADER):
        letter = col_letter(c)
        dim = ws.column_dimensions[letter]
        dim.width = widths.get(name, 8)
        dim.number_format = "@"
        dim.protection = unlocked
        cell = ws.cell(row=1, column=c + 1)
        cell.font = Font(bold=True)
        cell.fill = PatternFill("solid", fgColor="DDDDDD")
        cell.protection = Protection(locked=True)
        for r in range(2, rows + 2):
            d = ws.cell(row=r, column=c + 1)
            d.number_format = "@"
            d.protection = unlocked
    for col, choices in (("JENIS_KELAMIN", "L,P"), ("STATUS_PERKAWINAN", "B,S,P")):
        letter = col_letter(HEADER.index(col))
        dv = DataValidation(type="list", formula1=f'"{choices}"', allow_blank=True)
        dv.add(f"{letter}2:{letter}1048576")
        ws.add_data_validation(dv)
    ws.freeze_panes = "A2"
    # Protect the sheet so the header cannot be renamed or moved; data cells are unlocked.
    ws.protection.sheet = True
    ws.protection.formatCells = False
    ws.protection.formatColumns = False
    ws.protection.sort = False
    ws.protection.autoFilter = False
    wb.save(path)
