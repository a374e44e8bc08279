"""Times as people read them.

The system keeps its times as integer milliseconds since the epoch on the server's clock
(upload state, audit events, signed receipts). Whatever a person reads shows them as ISO 8601
with an offset instead: in JSON under the plain name, beside the integer under `<name>_ms`
for programs (`created_at` and `created_at_ms`, as `closes_at` and `closes_at_ms`); in
command output as ISO alone. UTC is written `Z`.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def iso(ms: int, tz: dt.tzinfo = UTC) -> str:
    """Epoch milliseconds as ISO 8601 with offset, to the millisecond:
    1732419990123 -> '2024-11-24T03:46:30.123Z' (UTC), '2024-11-24T10:46:30.123+07:00' (WIB)."""
    ms = int(ms)
    # Whole seconds and the rest apart: no float rounding moves a millisecond.
    t = dt.datetime.fromtimestamp(ms // 1000, tz).replace(microsecond=ms % 1000 * 1000)
    text = t.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if t.utcoffset() == dt.timedelta(0) else text


def stamped(tz: dt.tzinfo = UTC, **times: int | None) -> dict[str, str | int | None]:
    """For a JSON answer: each time as `name` (ISO) and `name_ms` (the integer); None stays None
    in both. stamped(created_at=1732419990123) ->
    {'created_at': '2024-11-24T03:46:30.123Z', 'created_at_ms': 1732419990123}."""
    out: dict[str, str | int | None] = {}
    for name, ms in times.items():
        out[name] = None if ms is None else iso(ms, tz)
        out[name + "_ms"] = None if ms is None else int(ms)
    return out


def parse(value: object) -> dt.datetime | None:
    """A time as a server sends it, for display: ISO 8601 (a missing offset is taken as UTC)
    or epoch milliseconds. None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str):
        try:
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    return None


def readable(value: object) -> str:
    """A time field's value for a person: ISO 8601 as sent when it is already a string,
    epoch milliseconds converted (UTC); anything else as it is."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso(int(value))
    return str(value)
