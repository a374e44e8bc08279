"""Kemendagri region code lists (`kode,nama`, every level in one file) and the election's region.

Code shapes: province `PP`, kab/kota `PP.KK`, kecamatan `PP.KK.CC`, village
`PP.KK.CC.DDDD`. The product never ships a list: the operator names the file
of the decree in force for the election (see docs/dukungan.md).
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Iterable, Literal

import msgspec

Level = Literal["gubernur", "bupati", "walikota"]

UNIT_NAME = {"gubernur": "kab/kota", "bupati": "kecamatan", "walikota": "kecamatan"}


class CodeListError(ValueError):
    pass


class CodeList(msgspec.Struct, frozen=True):
    version: str
    names: dict[str, str]  # every code -> name
    villages: frozenset[str]
    kecamatan: frozenset[str]
    kabkota: frozenset[str]
    provinces: frozenset[str]

    @property
    def nik_prefixes(self) -> frozenset[str]:
        """Kecamatan codes without dots: what digits 1-6 of a NIK issued there look like."""
        return frozenset(k.replace(".", "") for k in self.kecamatan)


def parse_code_list(text: str, version: str = "") -> CodeList:
    names: dict[str, str] = {}
    levels: tuple[set[str], ...] = (set(), set(), set(), set())
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    for lineno, rec in enumerate(reader, 1):
        if not rec or not rec[0].strip():
            continue
        code = rec[0].strip()
        if lineno == 1 and code.lower() == "kode":
            continue
        parts = code.split(".")
        widths = (2, 2, 2, 4)
        if len(parts) > 4 or any(len(p) != w or not p.isdigit() for p, w in zip(parts, widths)):
            raise CodeListError(
                f"code list {version or '(unnamed)'} line {lineno}: {code!r} is not PP, PP.KK, PP.KK.CC or PP.KK.CC.DDDD")
        names[code] = rec[1].strip() if len(rec) > 1 else ""
        levels[len(parts) - 1].add(code)
    if not levels[3]:
        raise CodeListError(f"code list {version or '(unnamed)'} has no village codes (PP.KK.CC.DDDD)")
    return CodeList(version=version, names=names, villages=frozenset(levels[3]), kecamatan=frozenset(levels[2]),
                    kabkota=frozenset(levels[1]), provinces=frozenset(levels[0]))


def load_code_list(path: str | Path, version: str = "") -> CodeList:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CodeListError(f"code list file not found: {p}. Set code_list.path in the election file "
                            "to the Kemendagri list in force for the election.") from None
    except UnicodeDecodeError as e:
        raise CodeListError(f"code list {p} is not UTF-8 text ({e}); save it as CSV UTF-8 with columns kode,nama") from None
    return parse_code_list(text, version or p.stem)


def check_region_code(level: str, code: str) -> str | None:
    """None if `code` has the shape the level needs, else what is wrong."""
    parts = code.split(".")
    if level == "gubernur":
        ok = len(parts) == 1 and len(code) == 2 and code.isdigit()
        return None if ok else f"a gubernur election's region_code is a province code PP such as '73', got {code!r}"
    ok = len(parts) == 2 and all(len(p) == 2 and p.isdigit() for p in parts)
    if not ok:
        return f"a {level} election's region_code is a kab/kota code PP.KK such as '19.71', got {code!r}"
    kk = int(parts[1])
    if level == "walikota" and kk < 71:
        return f"{code!r} is a kabupaten code (01-69); a walikota election needs a kota code (71-99)"
    if level == "bupati" and kk >= 71:
        return f"{code!r} is a kota code (71-99); a bupati election needs a kabupaten code (01-69)"
    return None


def region_villages(codes: CodeList, region: str) -> frozenset[str]:
    prefix = region + "."
    return frozenset(v for v in codes.villages if v.startswith(prefix))


def spread_units(codes: CodeList, level: str, region: str) -> tuple[str, ...]:
    """The kab/kota (gubernur) or kecamatan (bupati/walikota) of the region, per the code list."""
    prefix = region + "."
    pool = codes.kabkota if level == "gubernur" else codes.kecamatan
    return tuple(sorted(u for u in pool if u.startswith(prefix)))


def synthetic_code_list_text(provinces: Iterable[str] = ("19", "73"), kab_per_prov: int = 7,
                             kec_per_kab: int = 7, villages_per_kec: int = 6, seed: int = 7) -> str:
    """A made-up list with the real shapes, for tests and load runs when no official list is at hand.

    Codes and names are invented; do not mistake them for Kemendagri's.
    """
    rnd = random.Random(seed)
    out = ["kode,nama"]
    for pp in provinces:
        out.append(f"{pp},PROVINSI CONTOH {pp}")
        kks = [f"{i:02d}" for i in range(1, kab_per_prov)] + ["71"]
        for kk in kks:
            kind = "KOTA" if int(kk) >= 71 else "KAB."
            out.append(f"{pp}.{kk},{kind} CONTOH {pp}{kk}")
            for c in range(1, kec_per_kab + 1):
                out.append(f"{pp}.{kk}.{c:02d},Kecamatan Contoh {pp}{kk}{c:02d}")
                for v in range(1, villages_per_kec + 1):
                    first = rnd.choice("12")
                    out.append(f"{pp}.{kk}.{c:02d}.{first}{v:03d},Desa Contoh {v}")
    return "\n".join(out) + "\n"
