"""Row verdicts as CSV, with reason labels in Indonesian and English, and what to do about each reason."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Iterable

from .reasons import REASONS
from .rules import RowVerdict

EXPORT_HEADER = ("BARIS", "NIK", "NAMA", "KODE_DESA", "STATUS", "KODE_ALASAN", "ALASAN", "REASON")

# What the team should do, per reason (Indonesian, English).
ACTIONS: dict[str, tuple[str, str]] = {
    "NIK_FORMAT": ("ketik ulang NIK 16 digit persis seperti di KTP-el", "retype the 16-digit NIK exactly as on the KTP-el"),
    "NIK_DATE_INVALID": ("periksa NIK pada KTP-el; digit 7-12 harus tanggal lahir", "check the NIK on the KTP-el; digits 7-12 must be a birth date"),
    "NIK_AS_NUMBER": ("format kolom NIK sebagai Teks lalu ketik ulang NIK dari KTP-el", "format the NIK column as Text and retype the NIK from the KTP-el"),
    "NIK_SERIAL_0000": ("cocokkan NIK dengan KTP-el (akan diperiksa petugas)", "compare the NIK with the KTP-el (a reviewer will check)"),
    "NIK_PREFIX_UNKNOWN": ("cocokkan NIK dengan KTP-el (akan diperiksa petugas)", "compare the NIK with the KTP-el (a reviewer will check)"),
    "NIK_DOB_MISMATCH": ("cocokkan tanggal lahir dan JK dengan KTP-el", "compare birth date and sex with the KTP-el"),
    "REGION_CODE_INVALID": ("pilih kode desa dari daftar Kepmendagri, jangan diketik manual", "pick the village code from the Kemendagri list; do not type it"),
    "OUT_OF_REGION": ("pendukung harus berdomisili di wilayah pemilihan; ganti pendukung", "supporters must live in the region; replace the supporter"),
    "UNDERAGE": ("pendukung belum 17 tahun dan belum kawin; ganti pendukung", "supporter under 17 and never married; replace the supporter"),
    "PROHIBITED_OCCUPATION": ("TNI/Polri/ASN/penyelenggara/perangkat desa tidak boleh mendukung; pensiunan boleh", "TNI/Polri/ASN/organisers/village officials may not support; retired is fine"),
    "FIELD_INVALID": ("lengkapi nama, JK (L/P), tanggal lahir (DD-MM-YYYY), status kawin (B/S/P), alamat, RT/RW", "fill name, sex (L/P), birth date (DD-MM-YYYY), marital status (B/S/P), address, RT/RW"),
    "DUP_INTERNAL": ("baris ini tidak dihitung; hapus duplikatnya", "this row is not counted; remove the duplicate"),
    "DUP_EXTERNAL": ("pendukung juga mendukung paslon lain; ia memilih saat verifikasi faktual", "also supports another pair; the supporter chooses at field verification"),
    "DUP_POTENTIAL": ("NIK sama dengan data berbeda: periksa mana yang benar", "same NIK with different data: check which is right"),
    "DUP_PHONE": ("nomor HP dipakai beberapa pendukung: pastikan benar", "phone shared by several supporters: make sure it is right"),
    "NO_KTP": ("lampirkan pindaian KTP-el bernama <NIK>_ktp.jpg atau .pdf", "attach the KTP-el scan named <NIK>_ktp.jpg or .pdf"),
    "NO_STATEMENT": ("lampirkan surat pernyataan bernama <NIK>_pernyataan.pdf", "attach the signed statement named <NIK>_pernyataan.pdf"),
    "DATE_FROM_SPREADSHEET": ("periksa tanggal lahir dengan KTP-el; lain kali format kolom sebagai Teks", "check the birth date against the KTP-el; next time format the column as Text"),
    "TEMPLATE_INVALID": ("mulai dari templat kosong: unggah template", "start from the blank template: unggah template"),
}


# What a spreadsheet would run as a formula when the export is opened (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_text(value: str) -> str:
    """A cell copied from a team's file, made safe to open: one that a spreadsheet would run as a
    formula gets a leading apostrophe, and is shown as the text it is."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def verdict_records(rows: Iterable[RowVerdict]) -> Iterable[tuple[str, ...]]:
    for r in rows:
        yield (str(r.row_no), as_text(r.nik), as_text(r.nama), as_text(r.kode_desa), r.status, ";".join(r.reasons),
               "; ".join(REASONS[c].label_id for c in r.reasons), "; ".join(REASONS[c].label_en for c in r.reasons))


def write_verdicts_csv(rows: Iterable[RowVerdict], out: str | Path | IO[str]) -> None:
    """CSV UTF-8 with BOM (so Excel shows the Indonesian text right), one line per row."""
    if isinstance(out, (str, Path)):
        with open(out, "w", encoding="utf-8-sig", newline="") as f:
            write_verdicts_csv(rows, f)
        return
    w = csv.writer(out, lineterminator="\n")
    w.writerow(EXPORT_HEADER)
    w.writerows(verdict_records(rows))


def verdicts_csv_text(rows: Iterable[RowVerdict]) -> str:
    buf = io.StringIO()
    write_verdicts_csv(rows, buf)
    return buf.getvalue()
