"""When to try again, and how long to wait first.

* `Retry-After` (delta-seconds or HTTP-date) is obeyed: the server knows when it
  will have room; we wait that long plus up to 20% jitter so a crowd of clients
  refused together does not come back together.
* Without it: jittered exponential back-off (0.5 s doubling, capped at 30 s,
  each wait drawn from [d/2, d]).
* A per-client retry budget (Google SRE, "Handling overload"): retries may be at
  most `ratio` of the requests sent, plus `minimum` to start with. A retry that
  finds the budget spent is not sent; the file is given up with that reason and
  the next `unggah push` resumes it from the acknowledged offset.
"""

from __future__ import annotations

import email.utils
import random
import time

# "Not now": wait and send the same request again.
RETRYABLE = frozenset({408, 423, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 600.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value, or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0, rnd: random.Random | None = None) -> float:
    """Attempt 1, 2, 3...: a wait drawn from [d/2, d], d = min(cap, base * 2**(attempt-1))."""
    r = rnd or random
    d = min(cap, base * 2 ** max(0, attempt - 1))
    return d * (0.5 + 0.5 * r.random())


def delay(attempt: int, retry_after_value: str | None, rnd: random.Random | None = None) -> float:
    ra = retry_after(retry_after_value)
    if ra is not None:
        return ra * (1.0 + 0.2 * (rnd or random).random())
    return backoff(attempt, rnd=rnd)


class RetryBudget:
    """Retries allowed = minimum + ratio x requests sent. Shared by every file of one push."""

    def __init__(self, ratio: float = 0.1, minimum: int = 30) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.requests = 0
        self.retries = 0

    def request(self) -> None:
        self.requests += 1

    @property
    def allowed(self) -> int:
        return self.minimum + int(self.ratio * self.requests)

    def try_spend(self) -> bool:
        if self.retries >= self.allowed:
            return False
        self.retries += 1
        return True

    def describe(self) -> str:
        return f"{self.retries} retries for {self.requests} requests (budget {self.minimum} + {self.ratio:.0%})"
