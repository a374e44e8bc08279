"""Scans of the KTP-el and of the signed statement (B.1-KWK): type, size, pages, and which supporter they belong to.

Type is decided by magic bytes, never by the file name or the client's
Content-Type: PDF starts with `%PDF-`, JPEG with FF D8 FF.

The PDF page count is a cheap estimate: it counts `/Type /Page` objects
(not `/Pages`) in the raw bytes. It is exact for ordinary scanner output but
undercounts pages inside compressed object streams (PDF 1.5+), so it can let
an oversized file through, never reject a good one wrongly. A full parser
would need a dependency; the estimate is enough to stop a 300-page upload.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Literal, Mapping

import msgspec

from .election import ScanLimits

ScanKind = Literal["ktp", "statement"]

_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")
_NIK_IN_NAME = re.compile(r"(?<!\d)(\d{16})(?!\d)")
_KTP_WORDS = ("ktp", "suket")
_STATEMENT_WORDS = ("pernyataan", "statement", "b1kwk", "b.1-kwk", "b1-kwk", "b.1", "dukungan")


class ScanCheck(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    content_type: str | None  # application/pdf or image/jpeg
    size: int
    pages: int | None
    problems: list[str]


class ScanLink(msgspec.Struct, frozen=True):
    nik: str
    kind: ScanKind


class ScanSets(msgspec.Struct, frozen=True):
    """The NIKs that have a scan of each kind: the input of the NO_KTP / NO_STATEMENT rule."""

    ktp: frozenset[str] = frozenset()
    statement: frozenset[str] = frozenset()


def sniff_type(head: bytes) -> str | None:
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def count_pdf_pages(data: bytes) -> int:
    return len(_PAGE.findall(data))


def check_scan(name: str, data: bytes, limits: ScanLimits, size: int | None = None) -> ScanCheck:
    """Check one scan. `size` is the real size when `data` is only the head of a too-big file."""
    problems: list[str] = []
    ctype = sniff_type(data[:8])
    pages = None
    size = len(data) if size is None else size
    if ctype is None:
        shown = data[:8].hex(" ") or "(empty)"
        problems.append(f"{name}: bukan PDF atau JPEG (awal berkas: {shown}); pindai ulang sebagai PDF/JPEG / "
                        f"not a PDF or JPEG (starts with {shown}); scan again as PDF or JPEG. "
                        "PNG, HEIC and Word files are not accepted.")
    if size > limits.max_bytes:
        problems.append(f"{name}: {size:,} byte, batas {limits.max_bytes:,} / {size:,} bytes, "
                        f"limit {limits.max_bytes:,}: scan at a lower resolution or in grey scale")
    if ctype == "application/pdf" and size <= limits.max_bytes:
        pages = count_pdf_pages(data)
        if pages > limits.max_pages:
            problems.append(f"{name}: {pages} halaman, batas {limits.max_pages} / {pages} pages, "
                            f"limit {limits.max_pages}: one supporter per file")
    elif ctype == "image/jpeg":
        pages = 1
    return ScanCheck(name=name, ok=not problems, content_type=ctype, size=size, pages=pages,
                     problems=problems)


def link_scan(name: str, metadata: Mapping[str, str] | None = None) -> ScanLink | None:
    """Which supporter and which document a scan is, from metadata (preferred) or the file name.

    Names look like `3171014505900001_ktp.jpg` or `3171014505900001_pernyataan.pdf`.
    Returns None when no single NIK or no kind can be found.
    """
    meta = metadata or {}
    nik = (meta.get("nik") or "").strip()
    kind = (meta.get("kind") or "").strip().lower()
    stem = Path(name).stem.lower()
    if not nik:
        found = set(_NIK_IN_NAME.findall(stem))
        if len(found) != 1:
            return None
        nik = found.pop()
    if len(nik) != 16 or not nik.isdigit():
        return None
    if kind in ("ktp", "statement"):
        return ScanLink(nik, kind)  # type: ignore[arg-type]
    if kind in ("pernyataan", "b1", "b.1-kwk"):
        return ScanLink(nik, "statement")
    rest = stem.replace(nik, " ")
    if any(w in rest for w in _KTP_WORDS):
        return ScanLink(nik, "ktp")
    if any(w in rest for w in _STATEMENT_WORDS):
        return ScanLink(nik, "statement")
    return None


def scan_sets(links: Iterable[ScanLink]) -> ScanSets:
    ktp: set[str] = set()
    st: set[str] = set()
    for link in links:
        (ktp if link.kind == "ktp" else st).add(link.nik)
    return ScanSets(frozenset(ktp), frozenset(st))


class ScanDirResult(msgspec.Struct, frozen=True):
    sets: ScanSets
    checks: list[ScanCheck]  # only the failed ones
    unlinked: list[str]  # file names with no NIK or no kind


def scan_directory(path: str | Path, limits: ScanLimits, skip: Iterable[str | Path] = ()) -> ScanDirResult:
    """Check every file in a folder of scans; a bad scan does not count as attached.

    skip: files that are not scans although they sit in the folder, such as the list being
    checked (`unggah check kirim/daftar.xlsx --scans kirim/` named the list a bad scan)."""
    skipped = {Path(p).resolve() for p in skip}
    links: list[ScanLink] = []
    failed: list[ScanCheck] = []
    unlinked: list[str] = []
    for f in sorted(Path(path).iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.resolve() in skipped:
            continue
        link = link_scan(f.name)
        if link is None:
            unlinked.append(f.name)
            continue
        size = f.stat().st_size
        with open(f, "rb") as fh:
            # A too-big file is judged on its head and size, never read whole.
            data = fh.read(8 if size > limits.max_bytes else size)
        check = check_scan(f.name, data, limits, size=size)
        if check.ok:
            links.append(link)
        else:
            failed.append(check)
    return ScanDirResult(scan_sets(links), failed, unlinked)
