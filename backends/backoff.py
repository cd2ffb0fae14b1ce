"""The one backoff policy: how long to leave a failing thing alone before trying it again.

Exponential waits (base * 2**(failures-1), capped) with jitter, so many devices recovering
from the same outage do not come back in lockstep. Pure: the caller passes the clock
(`now`, any monotonic seconds) and may pass a seeded `random.Random`, so tests are exact;
nothing here sleeps. Used by `RetryingStore`; fits a store's health record (one probe
when the wait is over, reset on the first success), an encode retry or a backup retry.
"""
from __future__ import annotations

import random
import threading
from typing import Literal

Jitter = Literal["full", "equal", "none"]


def delay(failures: int, base: float, cap: float, jitter: Jitter, rng: random.Random) -> float:
    """The wait after the `failures`-th failure in a row (1 = the first).

    Full jitter draws from [0, d]: the widest spread, but a wait may be near zero. Equal
    jitter draws from [d/2, d]: never less than half, for callers that must not hammer.
    """
    if failures < 1:
        return 0.0
    # min() before the power would overflow for long outages: 2**failures grows without bound.
    d = min(cap, base * 2 ** min(failures - 1, 62))
    if jitter == "full":
        return rng.uniform(0, d)
    if jitter == "equal":
        return d / 2 + rng.uniform(0, d / 2)
    return d


class Backoff:
    """Failures in a row of one thing, and when it may next be tried.

    `fail(now)` records a failure and returns when to try next; `ready(now)` says whether
    to try now, and once the wait is over answers True to one caller only (the probe)
    until that probe's outcome is recorded with `fail` or `ok`. Thread-safe, so the
    workers sharing one store can share its Backoff.
    """

    def __init__(self, base: float = 0.2, cap: float = 60.0, *, jitter: Jitter = "full",
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, not base={base} cap={cap}")
        if jitter not in ("full", "equal", "none"):
            raise ValueError(f"jitter is 'full', 'equal' or 'none', not {jitter!r}")
        self.base, self.cap, self.jitter = base, cap, jitter
        self.rng = rng or random.Random()
        self.failures = 0
        #: The last failure's error (whatever the caller passed), None once it succeeds.
        self.error: object = None
        #: When the next try is allowed (same clock as `now`); 0 while nothing fails.
        self.next_try = 0.0
        self._last_fail = float("-inf")
        self._probing = False
        self._lock = threading.Lock()

    def fail(self, now: float, error: object = None, *, started: float | None = None) -> float:
        """Record a failure at `now`; returns the time of the next try.

        With `started` (when the failed attempt began), an attempt that was already under
        way when a later failure was recorded does not lengthen the wait again: a burst of
        parallel requests dying in one outage counts as one failure.
        """
        with self._lock:
            self.error = error
            self._probing = False
            if self.failures and started is not None and started < self._last_fail:
                return self.next_try
            self.failures += 1
            self._last_fail = now
            self.next_try = now + delay(self.failures, self.base, self.cap, self.jitter, self.rng)
            return self.next_try

    def ok(self) -> bool:
        """Record a success: the wait is over at once. True if it had been failing."""
        with self._lock:
            was = self.failures > 0
            self.failures, self.error, self.next_try, self._probing = 0, None, 0.0, False
            self._last_fail = float("-inf")
            return was

    def ready(self, now: float) -> bool:
        """May the caller try now? While failing: once the wait is over, yes to one probe."""
        with self._lock:
            if not self.failures:
                return True
            if self._probing or now < self.next_try:
                return False
            self._probing = True
            return True

    def wait(self, now: float) -> float:
        """Seconds from `now` until the next try is allowed (0 if it is)."""
        return max(0.0, self.next_try - now) if self.failures else 0.0

    def __repr__(self) -> str:
        return (f"Backoff(base={self.base}, cap={self.cap}, jitter={self.jitter!r}, "
                f"failures={self.failures}, next_try={self.next_try:.3f})")
