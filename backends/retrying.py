"""Riding out short outages: `retrying` for one step, `RetryingStore` for every verb of a store.

Only `Unavailable` is retried, with the one backoff policy (`backoff.Backoff`, full jitter):
a missing object or a refused credential will not change by waiting. The SDKs retry
briefly on their own; this is the slower, outer loop.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import BinaryIO, Iterator, TypeVar

from .backoff import Backoff
from .base import ObjectInfo, Store, Unavailable, check_key, check_range

T = TypeVar("T")

Sleep = Callable[[float], None]


def retrying(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    sleep: Sleep = time.sleep,
    backoff: Backoff | None = None,
) -> T:
    """Call `fn` until it stops raising Unavailable, at most `attempts` times.

    Waits grow exponentially with full jitter (uniform in [0, min(max_delay,
    base_delay * 2**n)]). A put must be handed a fresh stream, so wrap the whole step, not
    the put alone (or use `RetryingStore`, which rewinds seekable sources).
    """
    policy = backoff or Backoff(base_delay, max_delay)
    for attempt in range(attempts):
        try:
            result = fn()
        except Unavailable as exc:
            if attempt == attempts - 1:
                raise
            sleep(policy.fail(0.0, exc))  # a relative clock: the wait is the next try's time
        else:
            policy.ok()
            return result
    raise AssertionError("unreachable")


class RetryingStore(Store):
    """A store whose verbs retry `Unavailable` with backoff before giving up.

    - `put` rewinds a seekable source for each attempt; any other source is retried only
      if the failed attempt read none of it (a stream partly sent cannot be replayed).
      A retried conditional create whose first response was lost may report
      AlreadyExists for an object it wrote itself; compare `stat(key).checksums` with the
      data's digest to tell.
    - `get` resumes a transfer cut off part way from the byte where it stopped (objects
      are immutable), so the caller sees one unbroken stream.
    - `list` restarts a cut-off listing and skips the names already yielded.
    Errors and names are the inner store's; the last `Unavailable` is raised as is.
    """

    def __init__(self, inner: Store, *, attempts: int = 5, base_delay: float = 0.2,
                 max_delay: float = 10.0, sleep: Sleep = time.sleep,
                 backoff: Callable[[], Backoff] | None = None) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self.inner, self.attempts, self.sleep = inner, attempts, sleep
        self.name, self.kind = inner.name, inner.kind
        self._policy = backoff or (lambda: Backoff(base_delay, max_delay))

    def _call(self, fn: Callable[[], T]) -> T:
        return retrying(fn, attempts=self.attempts, sleep=self.sleep, backoff=self._policy())

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        check_key(key)
        try:
            rewind = src.tell() if src.seekable() else None
        except (AttributeError, OSError, ValueError):
            rewind = None
        counted = _Counting(src)

        def attempt() -> ObjectInfo:
            if rewind is not None:
                src.seek(rewind)
            try:
                return self.inner.put(key, src if rewind is not None else counted, size)
            except Unavailable as exc:
                if rewind is None and counted.taken:
                    raise _Spent(exc) from None
                raise

        try:
            return self._call(attempt)
        except _Spent as spent:
            raise spent.error from None

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_key(key)
        check_range(start, length)
        first = self._call(lambda: self.inner.get(key, start, length))
        return self._resuming(first, key, start, length)

    def _resuming(self, chunks: Iterator[bytes], key: str, start: int,
                  length: int | None) -> Iterator[bytes]:
        got, policy, failures = 0, self._policy(), 0
        while True:
            try:
                for chunk in chunks:
                    got += len(chunk)
                    yield chunk
                return
            except Unavailable as exc:
                failures += 1
                if failures >= self.attempts:
                    raise
                self.sleep(policy.fail(0.0, exc))
            left = None if length is None else length - got
            if left == 0:
                return
            chunks = self._call(lambda: self.inner.get(key, start + got, left))

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        return self._call(lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        seen: set[str] = set()
        policy, failures = self._policy(), 0
        while True:
            try:
                for name in self.inner.list(prefix):
                    if name not in seen:
                        seen.add(name)
                        yield name
                return
            except Unavailable as exc:
                failures += 1
                if failures >= self.attempts:
                    raise
                self.sleep(policy.fail(0.0, exc))

    def delete(self, key: str) -> None:
        check_key(key)
        # A retried delete whose first response was lost finds nothing: NotFound, as for
        # any absent object (the object is gone either way).
        self._call(lambda: self.inner.delete(key))

    def presign(self, key: str, expires: timedelta) -> str:
        check_key(key)
        return self._call(lambda: self.inner.presign(key, expires))

    def close(self) -> None:
        self.inner.close()


class _Spent(Exception):
    """A put failed after reading from a source that cannot be rewound: do not retry."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(str(error))
        self.error = error


class _Counting:
    """Reads through to a source and remembers whether anything was taken from it."""

    def __init__(self, src: BinaryIO) -> None:
        self.src, self.taken = src, False

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.taken = self.taken or bool(data)
        return data

    def readinto(self, buf) -> int:
        n = self.src.readinto(buf)
        self.taken = self.taken or bool(n)
        return n

    def __getattr__(self, name: str):  # live, ready (backends/budget.py)
        return getattr(self.src, name)
