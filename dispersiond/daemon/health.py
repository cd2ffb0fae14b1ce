"""Whether a store may be sent to now: its failures in a row, on the one backoff policy."""
from __future__ import annotations

import random
import time

from backends.backoff import Backoff


class StoreHealth:
    """Backoff state of one store: exponential, with equal jitter, capped.

    While failing, nothing is sent to the store until the wait is over, and then a single
    probe (the caller passes how many requests it has in flight there). The wall-clock
    `retry_at` is fixed when a failure is recorded, so the status document does not
    change from one look to the next while nothing happens.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.backoff = Backoff(base, cap, jitter="equal", rng=rng)
        #: Wall clock of the next try while failing, else None.
        self.retry_at: float | None = None

    @property
    def failing(self) -> bool:
        return self.backoff.failures > 0

    @property
    def failures(self) -> int:
        return self.backoff.failures

    @property
    def error(self) -> str:
        return "" if self.backoff.error is None else str(self.backoff.error)

    def can_send(self, now: float, in_flight: int) -> bool:
        """May a request start at monotonic `now`? While failing: one probe once the wait is over."""
        if not self.failing:
            return True
        return now >= self.backoff.next_try and in_flight == 0

    def fail(self, now: float, error: str, started: float) -> float | None:
        """Record a failure of a request begun at `started`; returns the new wait, or None
        if it did not escalate (the request was under way when an earlier failure was
        recorded: one outage, not two)."""
        before = self.backoff.failures
        next_try = self.backoff.fail(now, error, started=started)
        if self.backoff.failures == before:
            return None
        wait = next_try - now
        self.retry_at = time.time() + wait
        return wait

    def recover(self) -> bool:
        """Record a success; True if the store had been failing (worth a log line)."""
        self.retry_at = None
        return self.backoff.ok()
