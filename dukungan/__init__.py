"""Domain rules for supporter lists (dukungan) of independent Pilkada candidates.

Pure functions and msgspec Structs; the only I/O is reading files the caller
names. Entry points the gateway and ingest use:

* election.load_election / parse_election -> Election
* rules.prepare(election) -> RuleContext (load once per election, reuse)
* preflight.validate_file(path, ctx, scans, other_pairs) -> Verdicts (raises TemplateError)
* history.standing(history) / history.apply_history(verdicts, standing, round_kind)
* progress.progress(rows, ctx) / progress_of(verdicts, ctx)
* windows.window_state(election, tenant, now) / windows.may_append(election, tenant, created_at, now)
* scans.check_scan / link_scan / scan_sets
* preflight.check_file / format_summary, export.write_verdicts_csv, template.write_template
"""

from .election import Election, ElectionError, load_election, parse_election
from .history import HistoryRow, apply_history, history_rows, standing
from .preflight import Report, check_file, format_summary, validate_file
from .progress import Progress, progress, progress_of
from .reasons import REASONS, Reason
from .rules import RowVerdict, RuleContext, Verdicts, prepare, validate
from .scans import ScanSets, check_scan, link_scan, scan_sets
from .template import HEADER, Table, TemplateError, read_table, write_template
from .windows import may_append, window_state

__all__ = [
    "Election", "ElectionError", "load_election", "parse_election", "HistoryRow", "apply_history", "history_rows",
    "standing", "Report", "check_file", "format_summary", "validate_file", "Progress", "progress", "progress_of",
    "REASONS", "Reason", "RowVerdict", "RuleContext", "Verdicts", "prepare", "validate", "ScanSets", "check_scan",
    "link_scan", "scan_sets", "HEADER", "Table", "TemplateError", "read_table", "write_template", "may_append",
    "window_state",
]
