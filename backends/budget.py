"""One memory budget for the part buffers of every upload in the process.

A multipart upload keeps its parts in memory while they are sent. Per-store caps
(`concurrency` x `part_size` for each store, each upload) add up: two large uploads at
once held ~80 MiB of parts. Here all parts in flight share `limit` bytes, with one
exception that keeps uploads from waiting on each other for ever: an upload fed live by
an encoder (a Pipe: its source waits on the encoder, which may wait on another upload)
may always hold one part (so the parts in flight stay within `limit` plus one part per
live upload). Any other upload waits for the bytes of its part to be there (`ready`)
before it asks, so no buffer sits empty on a slow source (and, should live uploads'
first parts fill the whole budget, waits for those uploads to end). Buffers are kept
and handed out again while uploads run (warm pages, no allocator fragmentation across
threads) and dropped once none does.

A source tells its kind by attributes: `live` (true: fed by an encoder as it runs) and
`ready(n)` (blocks until n more bytes can be read at once).
"""
from __future__ import annotations

import io
import threading
from typing import BinaryIO

from .base import SourceError

#: The process's default: four 8 MiB parts in flight across all uploads (but each upload
#: always has one); with two, a 256 MiB file behind a 100 MB/s link took 1.5x as long.
DEFAULT_LIMIT = 32 << 20


class PartBudget:
    """Part buffers for uploads: `take` one (None: over budget, send what is in flight
    first), fill it, send it, `give` it back."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.cond = threading.Condition()
        self.lock = self.cond  # what subclasses and tests lock on
        self.held = 0  # bytes of buffers taken and not given back
        self.waiting = 0  # callers blocked in `acquire`: they go before any `take`
        self.free: dict[int, list[bytearray]] = {}
        self.free_bytes = 0

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def take(self, size: int, first: bool, length: int | None = None) -> bytearray | None:
        """A buffer charged as `size` bytes, `length` long (default `size`; a last, short
        part reuses a full buffer cut down, not a fresh one), or None. `first` (a live
        upload that holds none) is always granted, any other only within the limit and
        when no one waits in `acquire`."""
        with self.cond:
            if not first and (self.waiting or not self._fits(size)):
                return None
            return self._grant(size, length)

    def acquire(self, size: int, length: int | None = None) -> bytearray:
        """Like `take`, but waits until the buffer fits (alone, it always does). Only
        for callers that hold no buffer and whose source is `ready`: what is held is
        being sent or filled, so it comes back."""
        with self.cond:
            self.waiting += 1
            try:
                while not self._fits(size):
                    self.cond.wait()
            finally:
                self.waiting -= 1
            return self._grant(size, length)

    def _grant(self, size: int, length: int | None) -> bytearray:
        """(lock held)"""
        self.held += size
        spare = self.free.get(size)
        if spare:
            self.free_bytes -= size
            buf = spare.pop()
        else:
            buf = bytearray(size)
        if length is not None and length < size:
            del buf[length:]
        return buf

    def give(self, buf: bytearray, size: int | None = None) -> None:
        """Return a buffer from `take` (its bytes are no longer in use), with the `size`
        it was charged as if that was not its length."""
        size = len(buf) if size is None else size
        with self.cond:
            self.held -= size
            self.cond.notify_all()
            if self.held == 0:  # no upload runs: let the memory go
                self.free.clear()
                self.free_bytes = 0
            elif len(buf) == size and self.held + self.free_bytes + size <= self.limit:
                self.free.setdefault(size, []).append(buf)
                self.free_bytes += size

    def set_limit(self, limit: int) -> None:
        with self.cond:
            self.limit = limit
            self.cond.notify_all()


def is_live(src: object) -> bool:
    """Is `src` fed by an encoder as it runs (see the module's docstring)?"""
    return bool(getattr(src, "live", False))


def wait_ready(src: object, n: int) -> None:
    """Block until `n` more bytes of `src` can be read at once (no-op for plain files)."""
    ready = getattr(src, "ready", None)
    if ready is not None:
        ready(n)


#: Shared by every store of the process (the daemon sets its limit from the config).
SHARED = PartBudget()


def first_buffer(budget: PartBudget, src: object, size: int, n: int) -> bytearray:
    """The buffer for an upload's first part in flight, `n` long, charged as `size`: a
    live source's at once, any other's once its bytes are ready and there is room."""
    wait_ready(src, n)  # a live source only waits out its throttle here
    if is_live(src):
        buf = budget.take(size, True, n)
        assert buf is not None
        return buf
    return budget.acquire(size, n)


def fill(src: BinaryIO, buf: bytearray, n: int) -> None:
    """Exactly `n` bytes of `src` into `buf[:n]` (readinto where the source has it, so no
    part is copied twice); SourceError if the source ends or fails first."""
    view = memoryview(buf)
    into = getattr(src, "readinto", None)
    got = 0
    try:
        while got < n:
            if into is not None:
                try:
                    k = into(view[got:n])
                except (NotImplementedError, io.UnsupportedOperation):
                    into = None  # a file-like that only reads
                    continue
            else:
                piece = src.read(n - got)
                k = len(piece)
                view[got:got + k] = piece
            if not k:
                raise SourceError(f"source ended after {got} of {n} bytes")
            got += k
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"source failed after {got} of {n} bytes: {exc!r}") from exc
    finally:
        view.release()
