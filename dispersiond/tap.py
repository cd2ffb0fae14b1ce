"""A staged file that an upload reads while the encoder is still writing it.

Uploading only after encoding costs the sum of both; reading behind the writer
costs about the larger. The writer reports each flushed write to the Tap; a
TapReader blocks until the bytes it wants are on disk, and fails at once if the
writer fails. Reads go through `os.pread` on a duplicate of the writer's
descriptor, so they neither move the writer's offset nor depend on the file's
name (the private container is written under a temporary name and renamed).
"""
from __future__ import annotations

import os
import threading

from backends import SourceError


class Tap:
    """Writer side: `attach` the open file, `advance` after each flushed write, then
    `finish` (every byte written) or `fail` (the encode stopped)."""

    def __init__(self, size: int) -> None:
        self.size = size  # the bytes the object will hold, known before encoding
        self.cond = threading.Condition()
        self.fd: int | None = None
        self.written = 0
        self.done = False
        self.error: BaseException | None = None

    def attach(self, fileno: int) -> None:
        """Share the writer's descriptor, which must be open for reading too ("w+b")."""
        with self.cond:
            self.fd = os.dup(fileno)
            self.cond.notify_all()

    def advance(self, written: int) -> None:
        with self.cond:
            self.written = written
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if not self.done:
                self.error = exc
            self.done = True
            self.cond.notify_all()

    def close(self) -> None:
        """Release the descriptor; only once every reader has returned."""
        with self.cond:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def reader(self) -> "TapReader":
        return TapReader(self)


class TapReader:
    """File-like over a Tap: read(n) returns n bytes (fewer only at `size`), waiting
    for the writer as needed. Raises SourceError if the writer failed or wrote a
    different number of bytes than planned."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.pos = 0

    def _wait(self, want: int) -> int:
        t = self.tap
        with t.cond:
            while True:
                if t.error is not None:
                    raise SourceError("the encode feeding this upload stopped "
                                      f"({type(t.error).__name__})")
                if t.fd is not None and t.written >= want:
                    return t.fd
                if t.done:
                    raise SourceError(f"the staged object ended at {t.written} bytes; "
                                      f"{t.size} were planned")
                t.cond.wait(1.0)

    def read(self, n: int = -1) -> bytes:
        left = self.tap.size - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        fd = self._wait(self.pos + n)
        data = os.pread(fd, n, self.pos)
        if len(data) != n:
            raise SourceError("the staged object is shorter on disk than its writer reported")
        self.pos += n
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(memoryview(buf)))
        memoryview(buf)[: len(data)] = data
        return len(data)
