"""Registration windows at the gateway: the commission's rules (dukungan.windows) on the server's clock.

The server's clock is the only clock. An upload may be created only while its
tenant's window is open; it may then append until that window's close for the
tenant plus the grace period, and `Upload-Expires` says exactly that.
"""

from __future__ import annotations

import datetime as dt
from typing import Callable

from dukungan.election import Election
from dukungan.windows import window_state

UTC = dt.timezone.utc
ZONE_NAMES = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA", "Asia/Jayapura": "WIT"}


class WindowClosed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Windows:
    def __init__(self, election: Election | None, clock: Callable[[], float]) -> None:
        self.election = election
        self.clock = clock

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), UTC)

    def local(self, t: dt.datetime) -> str:
        assert self.election is not None
        zone = self.election.timezone
        return t.astimezone(self.election.tz).strftime("%Y-%m-%d %H:%M:%S") + " " + ZONE_NAMES.get(zone, zone)

    def for_creation(self, tenant: str) -> tuple[str, int]:
        """(window name, deadline in ms for appends) or WindowClosed with what and when."""
        if self.election is None:
            return "", 0
        st = window_state(self.election, tenant, self.now())
        if not st.open:
            if st.next_opens_at:
                raise WindowClosed(f"no registration window is open now; the next one opens at "
                                   f"{self.local(st.next_opens_at)}")
            last = max(self.election.windows, key=lambda w: w.closes, default=None)
            name = f"'{last.name}' " if last else ""
            closes = self.local(last.closes.replace(tzinfo=self.election.tz)) if last else "its end"
            raise WindowClosed(f"the registration window {name}closed at {closes}; no upload can be started now. "
                               "If the commission granted your pair an extension, it is not in force yet")
        assert st.closes_at is not None
        deadline = st.closes_at + dt.timedelta(seconds=self.election.grace_seconds)
        name = st.round or ""
        if st.extended_by:
            name += f" (extended: {st.extended_by})"
        return name, int(deadline.timestamp() * 1000)

    def seconds_to_close(self, tenant: str = "") -> float | None:
        if self.election is None:
            return None
        st = window_state(self.election, tenant, self.now())
        return (st.closes_at - self.now()).total_seconds() if st.open and st.closes_at else None
