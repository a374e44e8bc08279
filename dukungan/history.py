"""The history rule: a new upload never overwrites an earlier one.

Every row ever received stays on record. What a new row does depends on the
*standing* of its NIK for the same pair before the upload, computed by
`standing()` from the stored history:

* earlier standing MS (a row of this NIK is counted): the new row is
  DUP_INTERNAL (TMS for that row, the supporter stays counted once), plus
  DUP_POTENTIAL when its identity data differ from the counted row. The
  counted row is untouched.
* earlier standing BMS (not counted, fixable): the new row is a correction.
  It is judged on its own, and it supersedes the earlier row: the earlier
  row keeps its verdict and gets a `superseded_by` link, never deleted. In a
  correction round this is the perbaikan KPU asks for; in a submission round
  it is a resubmission and works the same way. Identical data is allowed:
  a BMS for a missing scan is fixed by attaching the scan, not by new data.
* earlier standing TMS (not counted, final): the earlier row stays TMS. The
  new row is judged on its own as a new row; DUP_POTENTIAL is flagged if its
  identity data differ, because a changed birth date or village for a
  rejected NIK is what a reviewer should look at.
* no earlier row: the new row is judged on its own.

Inside one file the first row of a NIK is the one judged and later rows are
DUP_INTERNAL (rules.validate). Standing of a NIK: MS if any of its rows is
counted; otherwise the verdict of its latest row.

All functions are pure: the ingest worker loads the history from its
database, calls `apply_history`, and stores the returned records and links.
"""

from __future__ import annotations

from itertools import repeat
from typing import Iterable, Literal, Mapping, Sequence

import msgspec

from .reasons import MS, BMS, TMS, sort_codes, verdict_of
from .rules import Verdicts, fingerprint, fingerprints

Action = Literal["duplicate", "correction", "resubmission", "after_tms"]


class HistoryRow(msgspec.Struct, frozen=True):
    """One stored row verdict, as the ingest keeps it."""

    nik: str
    status: str  # MS | BMS | TMS
    upload_id: str
    row_no: int
    fingerprint: str
    round: str = ""
    superseded: bool = False


class Resolution(msgspec.Struct, frozen=True):
    index: int  # row index in the new upload
    nik: str
    action: Action
    earlier: HistoryRow  # the row whose standing decided; for correction/resubmission, the row superseded


class HistoryResult(msgspec.Struct):
    verdicts: Verdicts  # the new upload's verdicts with the history applied
    resolutions: list[Resolution]  # only rows whose NIK had history

    @property
    def superseded(self) -> list[tuple[HistoryRow, int]]:
        """(earlier row, new row index) pairs the ingest must link; nothing is deleted."""
        return [(r.earlier, r.index) for r in self.resolutions if r.action in ("correction", "resubmission")]


def standing(history: Iterable[HistoryRow]) -> dict[str, HistoryRow]:
    """Per NIK: the counted (MS) row if any, else the latest row. `history` is in arrival order."""
    out: dict[str, HistoryRow] = {}
    for h in history:
        cur = out.get(h.nik)
        if cur is not None and cur.status == MS and not cur.superseded:
            continue
        out[h.nik] = h
    return out


def apply_history(new: Verdicts, earlier: Mapping[str, HistoryRow], round_kind: str = "submission",
                  fps: Sequence[str] | None = None) -> HistoryResult:
    """Apply the history rule to a freshly validated upload. Returns new lists; `new` is not modified.

    fps: the rows' fingerprints when the caller has them already (rules.fingerprints), so a
    large upload is not fingerprinted twice."""
    t = new.table
    status = list(new.status)
    reasons = list(new.reasons)
    resolutions: list[Resolution] = []
    if earlier:
        seen: set[str] = set()
        for i, nik in enumerate(t.nik):
            prev = earlier.get(nik)
            if prev is None or nik in seen:
                continue
            seen.add(nik)  # later rows of the same NIK in this file are DUP_INTERNAL already
            if "NIK_FORMAT" in reasons[i] or "NIK_AS_NUMBER" in reasons[i]:
                continue
            differs = (fps[i] if fps is not None else fingerprint(t, i)) != prev.fingerprint
            if prev.status == MS:
                codes = reasons[i] + ("DUP_INTERNAL",) + (("DUP_POTENTIAL",) if differs else ())
                action: Action = "duplicate"
            elif prev.status == BMS:
                codes = reasons[i]
                action = "correction" if round_kind == "correction" else "resubmission"
            elif prev.status == TMS:
                codes = reasons[i] + (("DUP_POTENTIAL",) if differs else ())
                action = "after_tms"
            else:
                raise ValueError(f"history row for NIK {nik} has status {prev.status!r}; expected MS, BMS or TMS")
            reasons[i] = sort_codes(codes)
            status[i] = verdict_of(reasons[i])
            resolutions.append(Resolution(i, nik, action, prev))
    return HistoryResult(Verdicts(table=t, status=status, reasons=reasons), resolutions)


def history_rows(v: Verdicts, upload_id: str, round_name: str = "") -> list[HistoryRow]:
    """The records the ingest stores for an upload (one per row, in file order)."""
    t = v.table
    return list(map(HistoryRow, t.nik, v.status, repeat(upload_id), t.row_no, fingerprints(t), repeat(round_name)))
