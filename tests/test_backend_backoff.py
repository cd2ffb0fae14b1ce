"""The one backoff policy: exact waits with a seeded random, probe once, reset on success."""
from __future__ import annotations

import random
import threading

import pytest

from backends.backoff import Backoff, delay


def test_waits_double_up_to_the_cap_without_jitter() -> None:
    rng = random.Random(0)
    assert [delay(n, 0.5, 4.0, "none", rng) for n in range(0, 7)] == [0, 0.5, 1, 2, 4, 4, 4]
    assert delay(10_000, 0.5, 4.0, "none", rng) == 4.0  # a long outage does not overflow


def test_jitter_is_deterministic_with_a_seed_and_stays_in_its_band() -> None:
    for jitter, low in (("full", 0.0), ("equal", 0.5)):
        a = [delay(n, 1.0, 8.0, jitter, random.Random(42)) for n in range(1, 8)]
        b = [delay(n, 1.0, 8.0, jitter, random.Random(42)) for n in range(1, 8)]
        assert a == b
        for n, wait in enumerate(a, start=1):
            top = min(8.0, 2.0 ** (n - 1))
            assert low * top <= wait <= top, (jitter, n, wait)
    spread = {delay(3, 1.0, 8.0, "full", random.Random(seed)) for seed in range(20)}
    assert len(spread) == 20  # devices recovering together do not come back in lockstep


def test_fail_returns_the_next_try_and_ready_waits_for_it() -> None:
    rng = random.Random(7)
    expected = [delay(n, 1.0, 10.0, "equal", random.Random(7)) for n in (1,)]
    b = Backoff(1.0, 10.0, jitter="equal", rng=rng)
    assert b.ready(0.0) and b.failures == 0 and b.error is None and b.wait(0.0) == 0
    next_try = b.fail(100.0, "timed out")
    assert next_try == pytest.approx(100.0 + expected[0])
    assert (b.failures, b.error, b.next_try) == (1, "timed out", next_try)
    assert not b.ready(next_try - 0.01)
    assert b.wait(next_try - 0.25) == pytest.approx(0.25)


def test_once_the_wait_is_over_one_probe_only() -> None:
    b = Backoff(1.0, 10.0, jitter="none")
    b.fail(0.0)
    assert b.ready(1.0)  # the probe
    assert not b.ready(1.0) and not b.ready(50.0)  # everyone else waits for its outcome
    assert b.fail(1.5, "still down") == 3.5 and b.failures == 2
    assert not b.ready(3.0) and b.ready(3.5) and not b.ready(3.5)
    assert b.ok() is True
    assert b.ready(3.6) and b.ready(3.6)  # healthy: no limit
    assert (b.failures, b.error, b.next_try) == (0, None, 0.0)
    assert b.ok() is False
    assert b.fail(10.0) == 11.0  # after a success the waits start over from base


def test_one_probe_among_many_threads() -> None:
    b = Backoff(1.0, 10.0, jitter="none")
    b.fail(0.0)
    answers: list[bool] = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        barrier.wait()
        answers.append(b.ready(5.0))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] * 15 + [True]


def test_failures_of_requests_started_before_the_last_failure_count_once() -> None:
    b = Backoff(1.0, 60.0, jitter="none")
    assert b.fail(10.0, "a", started=9.0) == 11.0
    # Requests in flight during that failure fail too: same outage, no escalation.
    assert b.fail(10.2, "b", started=9.5) == 11.0 and b.failures == 1 and b.error == "b"
    # A request started after it (the probe) failing is a new failure.
    assert b.fail(11.5, "c", started=11.0) == 13.5 and b.failures == 2


def test_bad_settings_are_refused() -> None:
    for base, cap in ((0, 1), (2, 1), (-1, 5)):
        with pytest.raises(ValueError, match="base"):
            Backoff(base, cap)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1, 2, jitter="half")  # type: ignore[arg-type]
