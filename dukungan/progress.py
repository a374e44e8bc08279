"""Per-pair progress: counted supporters, spread, and what is still missing."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import msgspec

from .reasons import BMS, FLAG, MS, PENDING, REASONS, TMS
from .rules import RowVerdict, RuleContext, Verdicts
from .thresholds import correction_requirement


class Progress(msgspec.Struct):
    ms: int  # distinct NIKs counted
    ms_pending_external: int  # of those, also claimed by another pair (decided at verfak)
    bms: int
    tms: int
    bms_by_reason: dict[str, int]
    tms_by_reason: dict[str, int]
    flags_by_reason: dict[str, int]
    ms_per_unit: dict[str, int]  # every unit of the region, zeros included
    units_meeting: int
    units: int
    min_support: int
    min_spread: int
    shortfall: int  # supporters still missing against the minimum
    spread_shortfall: int  # units still missing against the spread minimum
    correction_required: int  # multiplier x shortfall, for a correction round
    met: bool


class Tally(msgspec.Struct):
    """What progress is computed from: a pair's rows counted, not the rows themselves, so a
    store can count them where they are (stores/results.py does, in SQL) instead of reading
    a million rows back."""

    rows: dict[tuple[str, tuple[str, ...]], int]  # (status, reasons) -> rows
    counted: dict[str, int]  # unit -> distinct NIKs counted (MS) whose first MS row lies there
    pending: int  # distinct counted NIKs also claimed by another pair (DUP_EXTERNAL)


def unit_cut(ctx: RuleContext) -> int:
    """How many characters of KODE_DESA name the unit that the spread counts."""
    return 5 if ctx.election.level == "gubernur" else 8


def tally(rows: Iterable[RowVerdict], cut: int) -> Tally:
    """The Tally of row verdicts in arrival order (one upload, or all of a pair's current rows)."""
    counted: dict[str, str] = {}  # nik -> unit
    pending: set[str] = set()
    by: Counter = Counter()
    for r in rows:
        if r.status == MS:
            if r.nik not in counted:
                counted[r.nik] = r.kode_desa[:cut]
            if "DUP_EXTERNAL" in r.reasons:
                pending.add(r.nik)
        by[r.status, tuple(r.reasons)] += 1
    return Tally(rows=dict(by), counted=dict(Counter(counted.values())), pending=len(pending))


def progress(rows: Iterable[RowVerdict], ctx: RuleContext) -> Progress:
    """From row verdicts (any iterable: one upload or all of a pair's current rows) to progress."""
    return progress_of_tally(tally(rows, unit_cut(ctx)), ctx)


def progress_of_tally(t: Tally, ctx: RuleContext) -> Progress:
    th = ctx.thresholds
    n_bms = n_tms = 0
    by: dict[str, Counter] = {BMS: Counter(), TMS: Counter(), FLAG: Counter()}
    for (status, reasons), n in t.rows.items():
        if status == BMS:
            n_bms += n
        elif status != MS:
            n_tms += n
        for code in reasons:
            s = REASONS[code].status
            if s == FLAG or s == PENDING:
                by[FLAG][code] += n
            elif s == status:
                by[s][code] += n
    per_unit = dict.fromkeys(ctx.units, 0)
    for unit, n in t.counted.items():
        if unit in per_unit:  # MS rows are always inside the region
            per_unit[unit] += n
    meeting = sum(1 for c in per_unit.values() if c >= ctx.election.min_ms_per_unit)
    ms = sum(t.counted.values())
    shortfall = max(0, th.min_support - ms)
    spread_short = max(0, th.min_spread - meeting)
    return Progress(
        ms=ms, ms_pending_external=t.pending, bms=n_bms, tms=n_tms,
        bms_by_reason=dict(by[BMS]), tms_by_reason=dict(by[TMS]), flags_by_reason=dict(by[FLAG]),
        ms_per_unit=per_unit, units_meeting=meeting, units=th.units, min_support=th.min_support,
        min_spread=th.min_spread, shortfall=shortfall, spread_shortfall=spread_short,
        correction_required=correction_requirement(th.correction_multiplier, th.min_support, ms),
        met=shortfall == 0 and spread_short == 0)


def progress_of(v: Verdicts, ctx: RuleContext) -> Progress:
    return progress(v.rows(), ctx)
