"""Reason codes, their labels in both languages, and how they combine into a row verdict.

The table mirrors the project's domain reference. One addition: FIELD_INVALID
covers malformed required fields (empty name, JK not L/P, unparseable birth
date...) that the reference table has no code for; it is BMS because the team
can fix the cell and re-upload it in a correction round.
"""

from __future__ import annotations

from typing import Iterable, Literal

import msgspec

# Row verdicts. A row is MS unless a finding makes it worse.
MS = "MS"
BMS = "BMS"
TMS = "TMS"
# Statuses a finding can carry besides BMS/TMS: a flag is shown but changes
# nothing; PENDING (external duplicate) keeps the row counted until the
# supporter chooses a pair at field verification (verfak).
FLAG = "F"
PENDING = "PENDING"
# The whole file is rejected; never attached to a row.
FILE = "FILE"

Verdict = Literal["MS", "BMS", "TMS"]
FindingStatus = Literal["BMS", "TMS", "F", "PENDING", "FILE"]


class Reason(msgspec.Struct, frozen=True):
    code: str
    label_id: str
    label_en: str
    status: FindingStatus


_TABLE = (
    Reason("NIK_FORMAT", "NIK tidak 16 digit angka", "NIK is not 16 digits", TMS),
    Reason("NIK_DATE_INVALID", "Tanggal lahir pada NIK tidak valid", "birth date in NIK impossible", TMS),
    Reason("NIK_AS_NUMBER", "NIK tersimpan sebagai angka (digit terakhir hilang)",
           "NIK stored as a number, last digit lost", BMS),
    Reason("NIK_SERIAL_0000", "Nomor urut NIK 0000", "NIK serial 0000", FLAG),
    Reason("NIK_PREFIX_UNKNOWN", "Kode wilayah NIK tidak dikenal", "NIK prefix in no code list", FLAG),
    Reason("NIK_DOB_MISMATCH", "Tanggal lahir/JK tidak selaras dengan NIK",
           "birth date or gender differs from NIK", FLAG),
    Reason("REGION_CODE_INVALID", "Kode desa tidak sesuai Kepmendagri", "village code unknown or altered", BMS),
    Reason("OUT_OF_REGION", "Berdomisili di luar wilayah pemilihan", "lives outside the electoral region", TMS),
    Reason("UNDERAGE", "Belum 17 tahun dan belum pernah kawin", "under 17 and never married", TMS),
    Reason("PROHIBITED_OCCUPATION", "TNI/Polri/ASN/penyelenggara/perangkat desa",
           "barred occupation (retired is fine)", BMS),
    Reason("FIELD_INVALID", "Isian kolom tidak valid (nama/JK/tanggal lahir/status kawin/RT/RW)",
           "a required field is empty or malformed", BMS),
    Reason("DUP_INTERNAL", "Ganda internal (dihitung satu)", "same NIK twice for this pair: counted once", TMS),
    Reason("DUP_EXTERNAL", "Ganda eksternal", "also supports another pair", PENDING),
    Reason("DUP_POTENTIAL", "Potensi ganda (NIK sama, data beda)", "same NIK, other data differ", FLAG),
    Reason("DUP_PHONE", "Nomor HP sama dengan pendukung lain", "phone shared with other supporters", FLAG),
    Reason("NO_KTP", "Tidak dilampiri KTP-el", "KTP-el scan missing", BMS),
    Reason("NO_STATEMENT", "Tidak dilampiri surat pernyataan", "statement (B.1-KWK) scan missing", BMS),
    Reason("DATE_FROM_SPREADSHEET", "Tanggal lahir dari sel tanggal spreadsheet (dibaca DD-MM-YYYY)",
           "birth date was a spreadsheet date cell, read as the date it shows", FLAG),
    Reason("TEMPLATE_INVALID", "Kolom bergeser / hilang / berubah nama", "column shifted, missing or renamed", FILE),
)

REASONS: dict[str, Reason] = {r.code: r for r in _TABLE}
# Display and export order: the table order above.
ORDER: dict[str, int] = {r.code: i for i, r in enumerate(_TABLE)}
ROW_CODES: tuple[str, ...] = tuple(r.code for r in _TABLE if r.status != FILE)

_RANK = {MS: 0, BMS: 1, TMS: 2}


def verdict_of(codes: Iterable[str]) -> Verdict:
    """Worst status among the findings: TMS > BMS > MS; flags and PENDING leave it alone."""
    worst = MS
    for code in codes:
        status = REASONS[code].status
        if status in _RANK and _RANK[status] > _RANK[worst]:
            worst = status
    return worst  # type: ignore[return-value]


def sort_codes(codes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(codes), key=ORDER.__getitem__))
