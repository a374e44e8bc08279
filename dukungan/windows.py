"""Upload windows: when a tenant (candidate pair) may create an upload, and until when it may append.

All functions take an aware `now` (any zone; UTC expected) and compare in
UTC. Window times in the election file are local to the election's zone:
KPU announces "sampai pukul 23.59 WIT", not UTC.

Rule: an upload *created* while the tenant's window is open may keep
appending until that window's close for the tenant plus `grace_seconds`.
The server stamps creation time, so a slow link at 23:59 does not lose a
file that was started in time; a file started after close is refused.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from .election import Election, Window

UTC = dt.timezone.utc


class WindowState(msgspec.Struct, frozen=True):
    open: bool
    round: str | None  # the round open now, or None
    kind: str | None  # submission | correction
    closes_at: dt.datetime | None  # UTC close for this tenant, extensions applied
    extended_by: str | None  # authority of the extension in force, if any
    next_opens_at: dt.datetime | None  # UTC, when closed and a later round exists


class AppendDecision(msgspec.Struct, frozen=True):
    allowed: bool
    round: str | None
    deadline: dt.datetime | None  # UTC: close for the tenant + grace
    reason: str


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be timezone-aware (UTC); a naive time is ambiguous across WIB/WITA/WIT")
    return now.astimezone(UTC)


def _utc(e: Election, local: dt.datetime) -> dt.datetime:
    return local.replace(tzinfo=e.tz).astimezone(UTC)


def intervals(e: Election, tenant: str, w: Window) -> list[tuple[dt.datetime, dt.datetime, str | None]]:
    """The UTC intervals (opens, closes, authority) in which `tenant` may create uploads for round `w`."""
    out: list[tuple[dt.datetime, dt.datetime, str | None]] = [(_utc(e, w.opens), _utc(e, w.closes), None)]
    for x in e.extensions:
        if x.tenant == tenant and x.round == w.name:
            out.append((_utc(e, x.opens or w.opens), _utc(e, x.closes), x.authority))
    return out


def window_state(e: Election, tenant: str, now: dt.datetime) -> WindowState:
    t = _aware(now)
    best: tuple[Window, dt.datetime, str | None] | None = None
    next_open: dt.datetime | None = None
    for w in e.windows:
        for opens, closes, authority in intervals(e, tenant, w):
            if opens <= t <= closes:
                if best is None or closes > best[1]:
                    best = (w, closes, authority)
            elif opens > t and (next_open is None or opens < next_open):
                next_open = opens
    if best is None:
        return WindowState(False, None, None, None, None, next_open)
    w, closes, authority = best
    return WindowState(True, w.name, w.kind, closes, authority, None)


def may_append(e: Election, tenant: str, created_at: dt.datetime, now: dt.datetime) -> AppendDecision:
    """May an upload created at `created_at` (server stamp) still receive data at `now`?"""
    created = _aware(created_at)
    t = _aware(now)
    at_creation = window_state(e, tenant, created)
    if not at_creation.open:
        return AppendDecision(False, None, None, "upload was created while no window was open for this tenant")
    assert at_creation.closes_at is not None
    deadline = at_creation.closes_at + dt.timedelta(seconds=e.grace_seconds)
    if t < created:
        return AppendDecision(False, at_creation.round, deadline, "`now` is before the upload's creation time")
    if t <= deadline:
        return AppendDecision(True, at_creation.round, deadline, "created in time; within close + grace")
    return AppendDecision(False, at_creation.round, deadline,
                          f"round {at_creation.round!r} closed for this tenant and the grace period has passed")
