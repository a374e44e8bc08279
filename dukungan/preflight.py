"""Preflight: judge a file on the team's own machine exactly as the server will.

`check_file` runs the same parse and rules as the ingest (`validate_file`),
so a file that passes here gets the same verdicts there, given the same
election file, code list, scans and (server-side only) other pairs' NIKs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Collection

import msgspec

from .election import Election, load_election
from .export import ACTIONS
from .progress import Progress, progress_of
from .reasons import BMS, MS, REASONS, TMS
from .rules import RowVerdict, RuleContext, Verdicts, prepare, validate
from .scans import ScanSets, scan_directory
from . import fast
from .template import TemplateError, parse_csv_bytes, parse_xlsx, read_table

EXAMPLE_ROWS = 5


class FileProblem(msgspec.Struct, frozen=True):
    code: str
    message_id: str
    message_en: str
    problems: list[str]


class Report(msgspec.Struct):
    file: str
    election: str
    rejected: bool
    template_error: FileProblem | None = None
    rows: int = 0
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    examples: dict[str, list[int]] = {}  # reason -> first row numbers
    progress: Progress | None = None
    scans_checked: bool = False
    scan_problems: list[str] = []
    problem_rows: list[RowVerdict] = []  # every row with at least one reason
    verdicts: Verdicts | None = None  # full columnar result (not in --json output)


def validate_file(path: str | Path, ctx: RuleContext, scans: ScanSets | None = None,
                  other_pairs: Collection[str] = frozenset()) -> Verdicts:
    """Parse and judge a file on disk (`unggah check`); the server judges bytes (validate_bytes).
    Raises TemplateError.

    CSV goes through the numpy path (fast.py) when numpy is importable; it gives the same verdicts
    and hands anything outside its scope (quoted cells, rejected files...) back to the reference
    parser and rules. An XLSX sheet is read by the reference reader, then judged on the numpy
    path too where it can be (fast.validate_table).
    """
    data = fast.csv_bytes(path) if fast.available() else None
    if data is not None:
        v = fast.validate_csv_bytes(data, ctx, scans=scans, other_pairs=other_pairs)
        if v is not None:
            return v
        return validate(parse_csv_bytes(data), ctx, scans=scans, other_pairs=other_pairs)
    t = read_table(path)
    v = fast.validate_table(t, ctx, scans=scans, other_pairs=other_pairs) if fast.available() else None
    return v if v is not None else validate(t, ctx, scans=scans, other_pairs=other_pairs)


def validate_bytes(data: bytes, ctx: RuleContext, scans: ScanSets | None = None,
                   other_pairs: Collection[str] = frozenset()) -> Verdicts:
    """Judge a stored upload's bytes: the entry point the validator calls. Raises TemplateError.

    A stored upload has no name, so its content says what it is: a zip is an XLSX sheet,
    anything else is read as CSV, as `validate_file` reads a file without an extension.
    """
    if not data.startswith(b"PK\x03\x04"):
        v = fast.validate_csv_bytes(data, ctx, scans=scans, other_pairs=other_pairs) if fast.available() else None
        return v if v is not None else validate(parse_csv_bytes(data), ctx, scans=scans, other_pairs=other_pairs)
    t = parse_xlsx(data)
    v = fast.validate_table(t, ctx, scans=scans, other_pairs=other_pairs) if fast.available() else None
    return v if v is not None else validate(t, ctx, scans=scans, other_pairs=other_pairs)


def _context(election: Election | RuleContext | str | Path) -> RuleContext:
    if isinstance(election, RuleContext):
        return election
    if not isinstance(election, Election):
        election = load_election(election)
    return prepare(election)


def check_file(path: str | Path, election: Election | RuleContext | str | Path,
               scans: ScanSets | str | Path | None = None) -> Report:
    ctx = _context(election)
    name = Path(path).name
    scan_problems: list[str] = []
    scan_sets: ScanSets | None = None
    if isinstance(scans, ScanSets):
        scan_sets = scans
    elif scans is not None:
        res = scan_directory(scans, ctx.election.scans, skip=(path,))
        scan_sets = res.sets
        scan_problems = [p for c in res.checks for p in c.problems]
        scan_problems += [f"{u}: nama berkas tanpa NIK 16 digit atau tanpa jenis (ktp/pernyataan) / "
                          "file name has no 16-digit NIK or no kind (ktp/pernyataan)" for u in res.unlinked]
    try:
        v = validate_file(path, ctx, scans=scan_sets)
    except TemplateError as e:
        return Report(name, ctx.election.name, True,
                      FileProblem(e.code, e.message_id, e.message_en, list(e.problems)),
                      scans_checked=scan_sets is not None, scan_problems=scan_problems)
    counts = Counter(v.status)
    reasons: Counter[str] = Counter()
    examples: dict[str, list[int]] = {}
    problem_rows = []
    for i, codes in enumerate(v.reasons):
        if codes:
            problem_rows.append(v.row(i))
            for c in codes:
                reasons[c] += 1
                ex = examples.setdefault(c, [])
                if len(ex) < EXAMPLE_ROWS:
                    ex.append(v.table.row_no[i])
    return Report(name, ctx.election.name, False, None, len(v), {k: counts.get(k, 0) for k in (MS, BMS, TMS)},
                  dict(reasons), examples, progress_of(v, ctx), scan_sets is not None, scan_problems,
                  problem_rows, v)


def _n(x: int) -> str:
    return f"{x:,}".replace(",", ".")  # Indonesian thousands separator


def rows_en(n: int) -> str:
    """ "1 row", "2,000 rows": the English lines read as English."""
    return f"{_e(n)} row" if n == 1 else f"{_e(n)} rows"


def _e(x: int) -> str:
    return f"{x:,}"


def format_summary(report: Report) -> str:
    """A summary someone without programming background can act on: Indonesian first, then English."""
    out = [f"Berkas / File: {report.file}  —  {report.election}"]
    if report.rejected and report.template_error:
        e = report.template_error
        out += ["", "DITOLAK SELURUHNYA: templat tidak sesuai (TEMPLATE_INVALID).", e.message_id,
                "", "WHOLE FILE REJECTED: the file does not follow the template.", e.message_en]
        if e.problems:
            out += ["", "Sel bermasalah / cells:"] + [f"  - {p}" for p in e.problems]
        out += ["", "Perbaiki lalu periksa lagi. Tidak ada data yang tersimpan dari berkas ini.",
                "Fix it and check again. Nothing from this file counts yet."]
        return "\n".join(out)
    c = report.counts
    out += ["", f"{_n(report.rows)} baris: {_n(c.get(MS, 0))} memenuhi syarat (MS), "
                f"{_n(c.get(BMS, 0))} belum memenuhi syarat (BMS, bisa diperbaiki), "
                f"{_n(c.get(TMS, 0))} tidak memenuhi syarat (TMS)."]
    p = report.progress
    if p is not None:
        unit = "kab/kota" if len(next(iter(p.ms_per_unit), "xxxxx")) == 5 else "kecamatan"
        if p.met:
            out.append(f"Syarat minimal {_n(p.min_support)} dukungan di {p.min_spread} dari {p.units} {unit} "
                       f"TERPENUHI oleh berkas ini ({_n(p.ms)} MS, {p.units_meeting} {unit}).")
        else:
            out.append(f"Syarat minimal: {_n(p.min_support)} dukungan tersebar di {p.min_spread} dari {p.units} "
                       f"{unit}. Berkas ini: {_n(p.ms)} MS di {p.units_meeting} {unit}. "
                       f"Kurang {_n(p.shortfall)} dukungan dan {p.spread_shortfall} {unit}.")
    if not report.scans_checked:
        out.append("Pindaian KTP-el/surat pernyataan TIDAK diperiksa (pakai --scans FOLDER).")
    by_status = sorted(report.reasons, key=lambda k: ({"TMS": 0, "BMS": 1}.get(REASONS[k].status, 2), k))
    if by_status:
        out += ["", "Yang perlu ditindaklanjuti (jumlah baris, contoh nomor baris):"]
        for k in by_status:
            r = REASONS[k]
            ex = ", ".join(map(str, report.examples.get(k, [])))
            out.append(f"  [{r.status}] {r.label_id}: {_n(report.reasons[k])} baris (baris {ex}) "
                       f"→ {ACTIONS[k][0]}")
    for s in report.scan_problems[:20]:
        out.append(f"  [scan] {s}")
    out += ["", "English:", f"{rows_en(report.rows)}: {_e(c.get(MS, 0))} eligible (MS), {_e(c.get(BMS, 0))} "
                            f"fixable (BMS), {_e(c.get(TMS, 0))} ineligible (TMS)."]
    if p is not None:
        out.append(f"Minimum {_e(p.min_support)} supporters over {p.min_spread} of {p.units} units; this file: "
                   f"{_e(p.ms)} over {p.units_meeting}; missing {_e(p.shortfall)} supporters and "
                   f"{p.spread_shortfall} units.")
    if not report.scans_checked:
        out.append("Scans were NOT checked (use --scans FOLDER).")
    for k in by_status:
        r = REASONS[k]
        out.append(f"  [{r.status}] {r.label_en}: {rows_en(report.reasons[k])} → {ACTIONS[k][1]}")
    if report.scan_problems[20:]:
        out.append(f"  ... {len(report.scan_problems) - 20} more scan problems")
    return "\n".join(out)
