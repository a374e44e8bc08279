"""Realistic supporter lists for tests, demos and load runs, with trap rows for every reason code.

Clean rows carry valid NIKs (prefix from a kecamatan in the code list, the
birth date and sex of the row, serial 0001-9999), adult voters, village codes
of the configured region, lawful occupations (retired TNI/PNS included on
purpose) and unique phone numbers. Trap rows each provoke one reason code
and are listed in `GeneratedList.traps` so tests can check both directions:
every code is produced, and clean rows produce none.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path
from typing import Sequence

import msgspec

from .nik import make_nik
from .rules import RuleContext
from .scans import ScanSets
from .template import HEADER

GIVEN = ("AGUS", "SITI", "BUDI", "DEWI", "EKO", "NUR", "RINA", "ANDI", "YUSUF", "WAHYU", "SRI", "PUTRI",
         "HENDRA", "INDAH", "RAHMAT", "FITRI", "JOKO", "LESTARI", "MUHAMMAD", "AYU", "IWAN", "RATNA", "DEDI")
FAMILY = ("SANTOSO", "WIJAYA", "HIDAYAT", "LUBIS", "SIREGAR", "SAPUTRA", "HASIBUAN", "PANGARIBUAN", "RAHMAN",
          "SETIAWAN", "NASUTION", "KURNIAWAN", "PRATAMA", "SARAGIH", "MANURUNG", "TANJUNG", "HALIM", "")
PLACES = ("PANGKALPINANG", "MAKASSAR", "JAKARTA", "BANGKA", "PALEMBANG", "BONE", "GOWA", "MEDAN", "BANDUNG")
JOBS = ("WIRASWASTA", "PETANI/PEKEBUN", "MENGURUS RUMAH TANGGA", "PELAJAR/MAHASISWA", "KARYAWAN SWASTA",
        "NELAYAN/PERIKANAN", "PEDAGANG", "GURU HONORER", "BURUH HARIAN LEPAS", "PENSIUNAN PNS",
        "PURNAWIRAWAN TNI", "SOPIR", "BELUM/TIDAK BEKERJA")
STREETS = ("JL. MAWAR", "JL. MELATI", "JL. SUDIRMAN", "JL. MERDEKA", "GG. MANGGA", "JL. AHMAD YANI", "KOMP. PERMATA")


class GeneratedList(msgspec.Struct):
    rows: list[list[str]]  # HEADER order, all text
    traps: dict[str, list[int]]  # reason code -> every row index expected to carry it
    other_pairs: frozenset[str]  # NIKs "already counted for another pair" (DUP_EXTERNAL input)
    scans: ScanSets  # NIKs with scans (NO_KTP / NO_STATEMENT input)


class _Gen:
    def __init__(self, ctx: RuleContext, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.vote = ctx.election.vote_date
        self.villages = sorted(ctx.region_villages)
        self.outside = sorted(ctx.all_villages - ctx.region_villages)
        self.used: set[str] = set()
        self.n = 0
        self.phone_base = self.rnd.randrange(10_000_000, 80_000_000)
        self.ordinal_lo = dt.date(self.vote.year - 80, 1, 1).toordinal()
        self.ordinal_hi = dt.date(self.vote.year - 18, 1, 1).toordinal()

    def birth(self) -> dt.date:
        return dt.date.fromordinal(self.rnd.randrange(self.ordinal_lo, self.ordinal_hi))

    def nik(self, village: str, birth: dt.date, sex: str, serial: int | None = None) -> str:
        prefix = village[:8].replace(".", "")
        while True:
            s = serial if serial is not None else self.rnd.randrange(1, 10_000)
            nik = make_nik(prefix, birth, sex, s)  # type: ignore[arg-type]
            if nik not in self.used:
                self.used.add(nik)
                return nik
            if serial is not None:
                raise ValueError("serial collision")

    def row(self, **over: str) -> list[str]:
        r = self.rnd
        self.n += 1
        sex = over.pop("_sex", r.choice("LP"))
        birth = over.pop("_birth", None) or self.birth()
        village = over.get("KODE_DESA") or r.choice(self.villages)
        name = f"{r.choice(GIVEN)} {r.choice(FAMILY)}".strip()
        rec = {
            "NO": str(self.n), "NIK": self.nik(village, birth, sex), "NAMA": name, "JENIS_KELAMIN": sex,
            "TEMPAT_LAHIR": r.choice(PLACES), "TANGGAL_LAHIR": birth.strftime("%d-%m-%Y"),
            "STATUS_PERKAWINAN": r.choice("BSSSP"), "PEKERJAAN": r.choice(JOBS),
            "ALAMAT": f"{r.choice(STREETS)} NO. {r.randrange(1, 200)}", "RT": f"{r.randrange(1, 20):03d}",
            "RW": f"{r.randrange(1, 10):03d}", "KODE_DESA": village,
            "NO_HP": f"08{self.phone_base + self.n:010d}" if r.random() < 0.9 else "",
        }
        rec.update(over)
        return [rec[h] for h in HEADER]


def generate(ctx: RuleContext, n: int, seed: int = 1, dup_rate: float = 0.0, traps: bool = True) -> GeneratedList:
    """`n` clean rows (plus `dup_rate` exact duplicates spread through the list), then trap rows."""
    g = _Gen(ctx, seed)
    rows: list[list[str]] = []
    dup_rows: list[int] = []
    for _ in range(n):
        if rows and g.rnd.random() < dup_rate:
            dup_rows.append(len(rows))
            rows.append(list(g.rnd.choice(rows)))
        else:
            rows.append(g.row())
    out: dict[str, list[int]] = {"DUP_INTERNAL": list(dup_rows)}
    counted = [r[1] for r in rows]
    other: set[str] = set()
    no_ktp: set[str] = set()
    no_statement: set[str] = set()
    if traps:
        _add_traps(g, ctx, rows, out, other, no_ktp, no_statement)
    ktp = frozenset(r[1] for r in rows) - no_ktp
    statement = frozenset(r[1] for r in rows) - no_statement
    del counted
    return GeneratedList(rows, {k: sorted(v) for k, v in out.items() if v}, frozenset(other),
                         ScanSets(ktp=ktp, statement=statement))


def _add_traps(g: _Gen, ctx: RuleContext, rows: list[list[str]], out: dict[str, list[int]],
               other: set[str], no_ktp: set[str], no_statement: set[str]) -> None:
    col = HEADER.index
    vote = ctx.election.vote_date

    def add(code: str, row: list[str]) -> int:
        rows.append(row)
        out.setdefault(code, []).append(len(rows) - 1)
        return len(rows) - 1

    add("NIK_FORMAT", g.row(NIK="31710145059"))
    bad = g.row()
    bad[col("NIK")] = bad[1][:6] + "32" + bad[1][8:]  # day 32: no such date
    add("NIK_DATE_INVALID", bad)
    add("NIK_AS_NUMBER", g.row(NIK="3.17101E+15"))
    b = g.birth()
    v = g.rnd.choice(g.villages)
    add("NIK_SERIAL_0000", g.row(NIK=g.nik(v, b, "L", serial=0), _birth=b, _sex="L", KODE_DESA=v))
    b = g.birth()
    add("NIK_PREFIX_UNKNOWN", g.row(NIK=make_nik("990101", b, "P", 4242), _birth=b, _sex="P"))
    mism = g.row(_sex="L")
    mism[col("JENIS_KELAMIN")] = "P"
    add("NIK_DOB_MISMATCH", mism)
    fake = next(c for c in (g.villages[0][:9] + f"{k:04d}" for k in range(9999, 0, -1))
                if c not in ctx.all_villages)
    add("REGION_CODE_INVALID", g.row(KODE_DESA=fake))
    if g.outside:
        add("OUT_OF_REGION", g.row(KODE_DESA=g.rnd.choice(g.outside)))
    young = vote.replace(year=vote.year - 15, day=min(vote.day, 28))
    add("UNDERAGE", g.row(_birth=young, STATUS_PERKAWINAN="B"))
    add("PROHIBITED_OCCUPATION", g.row(PEKERJAAN="PEGAWAI NEGERI SIPIL (PNS)"))
    add("PROHIBITED_OCCUPATION", g.row(PEKERJAAN="ANGGOTA POLRI"))
    add("FIELD_INVALID", g.row(JENIS_KELAMIN="X"))
    # Duplicates refer to an original row that stays clean except where noted.
    orig = g.row()
    rows.append(orig)
    add("DUP_INTERNAL", list(orig))
    orig2 = g.row()
    rows.append(orig2)
    out.setdefault("DUP_POTENTIAL", []).append(len(rows) - 1)
    changed = list(orig2)
    changed[col("NAMA")] = orig2[col("NAMA")] + " ALIAS"
    i = add("DUP_POTENTIAL", changed)
    out.setdefault("DUP_INTERNAL", []).append(i)
    ext = add("DUP_EXTERNAL", g.row())
    other.add(rows[ext][1])
    p1 = add("DUP_PHONE", g.row(NO_HP="081299990001"))
    add("DUP_PHONE", g.row(NO_HP="+62 812-9999-0001"))
    del p1
    k = add("NO_KTP", g.row())
    no_ktp.add(rows[k][1])
    s = add("NO_STATEMENT", g.row())
    no_statement.add(rows[s][1])


def template_traps(rows: Sequence[Sequence[str]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Whole-file TEMPLATE_INVALID traps as (header, rows) for CSV: each must reject the file.
    Only the structure is here: a cell (a date serial, a code typed as a number) is a row verdict."""
    h = list(HEADER)
    body = [list(r) for r in rows]
    shifted = [r[:2] + [""] + r[2:-1] for r in body]
    traps = {
        "missing_column": ([c for c in h if c != "JENIS_KELAMIN"], [r[:3] + r[4:] for r in body]),
        "extra_column": (h[:2] + ["NO_KK"] + h[2:], shifted),
        "renamed_column": (["NO", "NO_NIK"] + h[2:], body),
        "swapped_columns": (h[:2] + [h[3], h[2]] + h[4:], body),
    }
    return traps


def write_csv(path: str | Path, rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER,
              bom: bool = False, delimiter: str = ",") -> None:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_xlsx(path: str | Path, rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER) -> None:
    """Values are written as given: str stays text, int/float/datetime become number/date cells (for traps)."""
    import openpyxl

    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("B.1.1-KWK")
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    wb.save(path)
