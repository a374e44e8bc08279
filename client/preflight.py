"""Preflight of supporter lists before any byte is sent, with the server's own validator
(`dukungan.preflight`). The one place the client touches `dukungan`: without it the
upload still works, and the summary says the lists were not checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LIST_SUFFIXES = (".csv", ".xlsx", ".xlsm")


def is_list(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES


@dataclass
class ListCheck:
    path: str
    rejected: bool  # TEMPLATE_INVALID: the whole file would be rejected
    summary: str
    code: str = ""  # "TEMPLATE_INVALID" when rejected
    checked: str = "rules"  # "rules" (with an election), "template" (without), "none"


def available() -> bool:
    try:
        import dukungan.preflight  # noqa: F401
    except ImportError:
        return False
    return True


def _has_scans(folder: Path) -> bool:
    from dukungan.scans import link_scan
    try:
        return any(f.is_file() and link_scan(f.name) is not None for f in folder.iterdir())
    except OSError:
        return False


def check_list(path: Path, election: str | None) -> ListCheck:
    """Judge one list as the server will. With an election file: template and every row rule,
    scans in the same folder included. Without: the template only (columns, text cells)."""
    if not available():
        return ListCheck(str(path), False, f"{path.name}: not checked (the dukungan package is not installed)",
                         checked="none")
    from dukungan.preflight import rows_en
    from dukungan.template import TemplateError, read_table
    if election:
        from dukungan.preflight import check_file, format_summary
        scans = path.parent if _has_scans(path.parent) else None
        report = check_file(path, election, scans=scans)
        code = report.template_error.code if report.template_error else ""
        return ListCheck(str(path), report.rejected, format_summary(report), code, "rules")
    try:
        table = read_table(path)
    except TemplateError as e:
        return ListCheck(str(path), True, f"Berkas / File: {path.name}\n{e}\n"
                         "DITOLAK SELURUHNYA / WHOLE FILE REJECTED.", e.code, "template")
    n = len(table.row_no) if hasattr(table, "row_no") else 0
    return ListCheck(str(path), False,
                     f"Berkas / File: {path.name}: templat sesuai / template OK ({rows_en(n)}). "
                     "Aturan per baris tidak diperiksa / row rules not checked (use --election election.toml).",
                     "", "template")
