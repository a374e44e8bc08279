"""Row rules: from a parsed Table to one verdict per row, column by column.

Why columnar: an upload can hold over a million rows, and per-row Python
(one object, a dozen method calls per row) runs at a few tens of thousands
of rows per second. Here every check is one pass over a column built from C
primitives (map over bound methods of sets and dicts, itertools.compress),
and yields the indices of the rows that fail. Clean rows, the vast
majority, never reach Python bytecode; only the failing indices are handled
one by one to build their reason lists.

Verdict of a row = worst status of its findings (TMS > BMS > MS; flags and
PENDING change nothing). NIK-derived checks are skipped for a row whose
NIK cannot be read, so a broken NIK gives one clear reason, not five.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from itertools import compress, repeat
from operator import add, gt, itemgetter, methodcaller, ne, not_
from typing import Collection, Iterator, Sequence

import msgspec

from . import nik as nikmod
from .election import Election
from .occupation import is_prohibited
from .reasons import MS, ROW_CODES, verdict_of
from .region import CodeList, load_code_list, region_villages, spread_units
from .scans import ScanSets
from .template import Table
from .thresholds import Thresholds, thresholds

_DATE_DMY = re.compile(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})$")
_DATE_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_SPACES = re.compile(r"\s+")

_SEX = {"L": "L", "P": "P", "LAKI-LAKI": "L", "LAKI LAKI": "L", "PEREMPUAN": "P", "PR": "P", "LK": "L"}
_MARITAL = {"B": "B", "S": "S", "P": "P", "BELUM KAWIN": "B", "KAWIN": "S", "SUDAH KAWIN": "S",
            "PERNAH KAWIN": "P", "CERAI HIDUP": "P", "CERAI MATI": "P"}
MAX_NAME = 100


class RuleContext(msgspec.Struct, frozen=True):
    """Everything the rules need for one election, precomputed once and reused for every file."""

    election: Election
    codes: CodeList
    region_villages: frozenset[str]
    all_villages: frozenset[str]
    nik_prefixes: frozenset[str]  # union over every list given
    births: nikmod.BirthTable
    adult_cutoff: str  # ISO date: born on or before it means 17 or older on vote day
    units: tuple[str, ...]
    thresholds: Thresholds


def adult_cutoff(vote_date: dt.date, age: int = nikmod.MIN_VOTER_AGE) -> str:
    try:
        d = vote_date.replace(year=vote_date.year - age)
    except ValueError:  # 29 Feb on vote day, no 29 Feb 17 years earlier
        d = dt.date(vote_date.year - age, 2, 28)
    return d.isoformat()


def prepare(election: Election, codes: CodeList | None = None,
            prefix_lists: Sequence[CodeList] | None = None) -> RuleContext:
    """Build the context. Without `codes`, loads the lists named in the election file."""
    if codes is None:
        codes = load_code_list(election.code_list.path, election.code_list.version)
    if prefix_lists is None:
        prefix_lists = [load_code_list(p) for p in election.code_list.nik_prefix_paths]
    villages = region_villages(codes, election.region_code)
    if not villages:
        raise ValueError(f"region_code {election.region_code!r} has no villages in code list "
                         f"{codes.version!r}: check region_code and code_list.path")
    prefixes = set(codes.nik_prefixes)
    for extra in prefix_lists:
        prefixes |= extra.nik_prefixes
    units = spread_units(codes, election.level, election.region_code)
    return RuleContext(
        election=election, codes=codes, region_villages=villages, all_villages=codes.villages,
        nik_prefixes=frozenset(prefixes), births=nikmod.birth_table(election.vote_date),
        adult_cutoff=adult_cutoff(election.vote_date), units=units,
        thresholds=thresholds(election.level, election.dpt_base, len(units), election.correction_multiplier))


class RowVerdict(msgspec.Struct, frozen=True):
    index: int  # 0-based position among the data rows
    row_no: int  # line or sheet row shown to people
    nik: str
    nama: str
    kode_desa: str
    status: str  # MS | BMS | TMS
    reasons: tuple[str, ...]


class Verdicts(msgspec.Struct):
    """Columnar result: status[i] and reasons[i] belong to table row i."""

    table: Table
    status: list[str]
    reasons: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.status)

    def row(self, i: int) -> RowVerdict:
        t = self.table
        return RowVerdict(i, t.row_no[i], t.nik[i], t.nama[i], t.kode_desa[i], self.status[i], self.reasons[i])

    def rows(self) -> Iterator[RowVerdict]:
        return map(self.row, range(len(self.status)))


def parse_row_date(text: str, vote_date: dt.date) -> dt.date | None:
    """DD-MM-YYYY (also / or .) or YYYY-MM-DD, between 1900-01-01 and the vote date."""
    m = _DATE_DMY.match(text)
    try:
        if m:
            d = dt.date(int(m[3]), int(m[2]), int(m[1]))
        else:
            m = _DATE_ISO.match(text)
            if not m:
                return None
            d = dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None
    return d if dt.date(1900, 1, 1) <= d <= vote_date else None


def normalize_phone(p: str) -> str:
    digits = "".join(ch for ch in p if ch.isdigit())
    if digits.startswith("62"):
        digits = "0" + digits[2:]
    elif digits.startswith("8"):  # a number cell dropped the leading 0
        digits = "0" + digits
    return digits


def _norm_text(s: str) -> str:
    return _SPACES.sub(" ", s).strip().upper()


def fingerprint(t: Table, i: int, row_iso: str | None = None) -> str:
    """The identity data of row i, normalised: equal fingerprints mean 'the same data' for duplicates.

    Phone, occupation and NO are left out: they change without the person changing.
    """
    if row_iso is None:
        d = parse_row_date(t.tanggal_lahir[i], dt.date(9999, 12, 31))
        row_iso = d.isoformat() if d else t.tanggal_lahir[i]
    return "|".join((t.nik[i], _norm_text(t.nama[i]), _SEX.get(_norm_text(t.jenis_kelamin[i]), t.jenis_kelamin[i]),
                     _norm_text(t.tempat_lahir[i]), row_iso, _norm_text(t.alamat[i]), t.rt[i].lstrip("0"),
                     t.rw[i].lstrip("0"), t.kode_desa[i]))


def _norm_column(col: Sequence[str]) -> list[str]:
    """_norm_text of every cell of a column, done on the whole column at once: the regex and
    upper() run once over one string instead of once per cell (a 1.2 million-row list)."""
    joined = "\x00".join(col)
    if joined.count("\x00") != len(col) - 1:  # a cell holds the separator itself
        return [_norm_text(s) for s in col]
    joined = _SPACES.sub(" ", joined).upper()
    # After the substitution a run of white space is one space: what strip() would remove from a
    # cell is a space next to a separator or at an end.
    joined = joined.replace(" \x00", "\x00").replace("\x00 ", "\x00").strip(" ")
    return joined.split("\x00") if col else []


def _by_value(col: Sequence[str], f) -> list[str]:
    """f of every cell, computed once per distinct value (dates, sexes, RT/RW repeat a lot)."""
    memo = {v: f(v) for v in set(col)}
    return list(map(memo.__getitem__, col))


def _row_iso(text: str) -> str:
    d = parse_row_date(text, dt.date(9999, 12, 31))
    return d.isoformat() if d else text


def fingerprints(t: Table) -> list[str]:
    """fingerprint(t, i) of every row, column by column (what the validator stores per row)."""
    sex = _by_value(t.jenis_kelamin, lambda v: _SEX.get(_norm_text(v), v))
    return list(map("|".join, zip(
        t.nik, _norm_column(t.nama), sex, _norm_column(t.tempat_lahir), _by_value(t.tanggal_lahir, _row_iso),
        _norm_column(t.alamat), _by_value(t.rt, lambda v: v.lstrip("0")), _by_value(t.rw, lambda v: v.lstrip("0")),
        t.kode_desa)))


def _fail(R: range, ok) -> list[int]:
    """Indices where the boolean iterator `ok` is false."""
    return list(compress(R, map(not_, ok)))


def validate(t: Table, ctx: RuleContext, scans: ScanSets | None = None,
             other_pairs: Collection[str] = frozenset()) -> Verdicts:
    """Judge every row of `t`. A cell is never a reason to reject the list: only the structure
    is (template.py); a cell a spreadsheet changed is a verdict on its row, or a flag.

    scans: NIKs having each scan kind; None skips NO_KTP/NO_STATEMENT (preflight without scans).
    other_pairs: NIKs counted for other pairs of the same election (DUP_EXTERNAL).
    """
    n = len(t)
    R = range(n)
    vote_date = ctx.election.vote_date
    hits: dict[str, list[int] | set[int]] = defaultdict(list)
    niks = t.nik

    # --- NIK structure
    joined = "".join(niks)
    bad_nik: set[int] = set()
    # The shortcut over the joined string needs every NIK at 16: a 15- and a 17-digit NIK join
    # to 32 digits too.
    if not (len(joined) == 16 * n and joined.isascii() and joined.isdigit() and all(len(x) == 16 for x in niks)):
        bad_nik.update(_fail(R, map(str.isdigit, niks)))
        bad_nik.update(compress(R, map(ne, map(len, niks), repeat(16))))
        bad_nik.update(_fail(R, map(str.isascii, niks)))
    del joined
    as_number = set(t.nik_numeric)
    for i in bad_nik:
        if nikmod.looks_like_number(niks[i]) and any(c in niks[i] for c in ".,eE"):
            as_number.add(i)
    hits["NIK_AS_NUMBER"] = as_number
    hits["NIK_FORMAT"] = bad_nik - as_number
    bad_nik |= as_number

    segs = list(map(itemgetter(slice(6, 12)), niks))
    nik_iso = list(map(ctx.births.iso.get, segs))
    bad_nik_date = set(_fail(R, nik_iso)) - bad_nik
    hits["NIK_DATE_INVALID"] = bad_nik_date
    nik_unusable = bad_nik | bad_nik_date
    hits["NIK_SERIAL_0000"] = set(compress(R, map(methodcaller("endswith", "0000"), niks))) - bad_nik
    hits["NIK_PREFIX_UNKNOWN"] = set(_fail(R, map(ctx.nik_prefixes.__contains__,
                                                  map(itemgetter(slice(0, 6)), niks)))) - bad_nik

    # --- other fields; distinct values are few, so normalise per distinct value
    dates = t.tanggal_lahir
    date_map = {}
    for v in set(dates):
        d = parse_row_date(v, vote_date)
        date_map[v] = d.isoformat() if d else ""
    row_iso = list(map(date_map.__getitem__, dates))
    bad_date = _fail(R, row_iso)
    sex_map = {v: _SEX.get(_norm_text(v), "") for v in set(t.jenis_kelamin)}
    sex = list(map(sex_map.__getitem__, t.jenis_kelamin))
    bad_sex = _fail(R, sex)
    marital_map = {v: _MARITAL.get(_norm_text(v), "") for v in set(t.status_perkawinan)}
    marital = list(map(marital_map.__getitem__, t.status_perkawinan))
    bad_marital = _fail(R, marital)
    rt_ok = {v for v in set(t.rt) | set(t.rw) if 1 <= len(v) <= 3 and v.isdigit()}
    field_bad = set(bad_date).union(bad_sex, bad_marital, _fail(R, t.nama), _fail(R, t.alamat),
                                    compress(R, map(gt, map(len, t.nama), repeat(MAX_NAME))),
                                    _fail(R, map(rt_ok.__contains__, t.rt)), _fail(R, map(rt_ok.__contains__, t.rw)))
    hits["FIELD_INVALID"] = field_bad

    # --- region
    kode = t.kode_desa
    not_here = _fail(R, map(ctx.region_villages.__contains__, kode))
    # A date cell read as the date the sheet shows: kept, and said so.
    hits["DATE_FROM_SPREADSHEET"] = t.date_from_sheet
    in_list = ctx.all_villages.__contains__
    hits["OUT_OF_REGION"] = [i for i in not_here if in_list(kode[i])]
    hits["REGION_CODE_INVALID"] = [i for i in not_here if not in_list(kode[i])]

    # --- NIK vs row: compare DDMMYY+sex only, so the century we guessed never blames the row
    row_short = {v: iso[2:] for v, iso in zip(date_map, date_map.values())}
    row_side = map(add, map(row_short.__getitem__, dates), sex)
    nik_side = map(ctx.births.short.get, segs)
    hits["NIK_DOB_MISMATCH"] = set(compress(R, map(ne, nik_side, row_side))) - nik_unusable - field_bad

    # --- eligibility: the KTP's birth date decides (a NIK's date can be wrong and stays valid)
    young = set(compress(R, map(gt, row_iso, repeat(ctx.adult_cutoff))))
    for i in bad_date:
        if nik_iso[i] and i not in nik_unusable and nik_iso[i] > ctx.adult_cutoff:
            young.add(i)
    hits["UNDERAGE"] = sorted(i for i in young if marital[i] not in ("S", "P"))

    occ = t.pekerjaan
    barred = {v for v in set(occ) if is_prohibited(v)}
    if barred:
        hits["PROHIBITED_OCCUPATION"] = list(compress(R, map(barred.__contains__, occ)))

    # --- duplicates within the file: the first row of a NIK counts, later ones do not
    seen: set[str] = set()
    add_seen = seen.add
    later = [i for i, x in enumerate(niks) if x in seen or add_seen(x)]
    del seen
    later = [i for i in later if i not in bad_nik]
    if later:
        hits["DUP_INTERNAL"] = later
        dup_values = {niks[i] for i in later}
        first_of: dict[str, int] = {}
        for i in compress(R, map(dup_values.__contains__, niks)):
            first_of.setdefault(niks[i], i)
        potential: set[int] = set()
        fp_cache: dict[int, str] = {}

        def fp(i: int) -> str:
            if i not in fp_cache:
                fp_cache[i] = fingerprint(t, i, row_iso[i] or dates[i])
            return fp_cache[i]

        for i in later:
            f = first_of[niks[i]]
            if fp(i) != fp(f):
                potential.update((i, f))
        hits["DUP_POTENTIAL"] = potential
    if other_pairs:
        hits["DUP_EXTERNAL"] = set(compress(R, map(other_pairs.__contains__, niks))) - bad_nik

    # --- phones shared by different people
    hits["DUP_PHONE"] = _shared_phones(t.no_hp, niks, R)

    # --- scans
    if scans is not None:
        hits["NO_KTP"] = _fail(R, map(scans.ktp.__contains__, niks))
        hits["NO_STATEMENT"] = _fail(R, map(scans.statement.__contains__, niks))

    return _assemble(t, n, hits)


def _shared_phones(phones: list[str], niks: list[str], R: range) -> set[int]:
    # Normalise only numbers not already in 08... form; most are.
    canon = phones
    odd = _fail(R, map(methodcaller("startswith", "08"), phones))
    joined = "".join(phones)
    if odd or not (joined.isascii() and joined.isdigit()):
        canon = list(phones)
        for i in odd:
            canon[i] = normalize_phone(phones[i]) if phones[i] else ""
        for i in _fail(R, map(str.isdigit, canon)):
            canon[i] = normalize_phone(canon[i]) if canon[i] else ""
    seen: set[str] = set()
    add_seen = seen.add
    repeated = {canon[i] for i in [i for i, x in enumerate(canon) if x and (x in seen or add_seen(x))]}
    del seen
    if not repeated:
        return set()
    holders: dict[str, list[int]] = defaultdict(list)
    for i in compress(R, map(repeated.__contains__, canon)):
        holders[canon[i]].append(i)
    out: set[int] = set()
    for rows in holders.values():
        if len({niks[i] for i in rows}) > 1:
            out.update(rows)
    return out


def _assemble(t: Table, n: int, hits: dict) -> Verdicts:
    per_row: dict[int, list[str]] = defaultdict(list)
    for code in ROW_CODES:
        for i in hits.get(code, ()):
            per_row[i].append(code)
    status = [MS] * n
    reasons: list[tuple[str, ...]] = [()] * n
    for i, codes in per_row.items():
        reasons[i] = tuple(codes)
        status[i] = verdict_of(codes)
    return Verdicts(table=t, status=status, reasons=reasons)
