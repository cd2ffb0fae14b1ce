"""Uploads fed by the encoder while it runs: from a staged file, or from memory.

Uploading only after encoding costs the sum of both; reading behind the writer
costs about the larger.

- A Tap is a staged file that an upload reads behind the writer. The writer reports
  each flushed write; a TapReader blocks until the bytes it wants are on disk, and
  fails at once if the writer fails. Reads go through `os.pread` on a duplicate of
  the writer's descriptor, so they neither move the writer's offset nor depend on the
  file's name (the private container is written under a temporary name and renamed).
- A Pipe hands the encoder's output straight to an upload, with no staged copy: the
  public fragment of a large file never touches the local disk (no second write of
  the file to flash, no fsync of it). At most `cap` bytes wait in memory; beyond that
  the encoder waits for the upload. If the upload fails, the encoder's next write
  raises DirectUploadFailed, and the whole encode is redone later (staged, if the
  store is still failing then).
"""
from __future__ import annotations

import os
import threading
from collections import deque

from backends import SourceError


class Reader:
    """`readinto` for file-likes that only know `read` (some SDKs call one, some the other)."""

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buf) -> int:
        data = self.read(len(memoryview(buf)))
        memoryview(buf)[: len(data)] = data
        return len(data)


class _Feed:
    """What both kinds share: the writer's end (`finish`, or `fail` with its error)."""

    def __init__(self, size: int) -> None:
        self.size = size  # the bytes the object will hold, known before encoding
        self.cond = threading.Condition()
        self.written = 0
        self.done = False
        self.error: BaseException | None = None

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


class Tap(_Feed):
    """Writer side: `attach` the open file, `advance` after each flushed write, then
    `finish` (every byte written) or `fail` (the encode stopped)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.fd: int | None = None

    def attach(self, fileno: int) -> None:
        """Share the writer's descriptor, which must be open for reading too ("w+b")."""
        with self.cond:
            self.fd = os.dup(fileno)
            self.cond.notify_all()

    def advance(self, written: int) -> None:
        with self.cond:
            self.written = written
            self.cond.notify_all()

    def close(self) -> None:
        """Release the descriptor; only once every reader has returned."""
        with self.cond:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def reader(self) -> "TapReader":
        return TapReader(self)


class TapReader(Reader):
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

    def ready(self, n: int) -> None:
        """Wait until `n` more bytes (or the rest) are on disk, so a part buffer taken
        now fills at once (backends/budget.py)."""
        n = min(n, self.tap.size - self.pos)
        if n > 0:
            self._wait(self.pos + n)

    def readinto(self, buf) -> int:
        """Straight into the caller's buffer (a multipart upload's part): no copy between."""
        out = memoryview(buf).cast("B")
        n = min(len(out), self.tap.size - self.pos)
        if n <= 0:
            return 0
        fd = self._wait(self.pos + n)
        got = os.preadv(fd, [out[:n]], self.pos)
        if got != n:
            raise SourceError("the staged object is shorter on disk than its writer reported")
        self.pos += n
        return n


class DirectUploadFailed(Exception):
    """An upload fed from a Pipe failed: there is no staged copy to retry it from."""

    def __init__(self, store: str, cause: BaseException) -> None:
        super().__init__(f"the upload to store {store!r} failed: {type(cause).__name__}: {cause}")
        self.store, self.cause = store, cause


#: What may wait in a Pipe for its upload: a few of the encoder's writes. The upload
#: copies them straight into its part buffers (backends/budget.py), which hold the rest.
PIPE_CAP = 2 << 20


class Pipe(_Feed):
    """Writer side: `put` each piece (it is copied), then `finish` or `fail`. An upload
    that gives up calls `broken` with what the writer's next `put` is to raise."""

    def __init__(self, size: int, store: str, cap: int = PIPE_CAP) -> None:
        super().__init__(size)
        self.store, self.cap = store, cap
        self.chunks: deque[bytes] = deque()
        self.head_off = 0  # bytes of chunks[0] already read
        self.buffered = 0
        self.reader_error: BaseException | None = None  # the upload's

    def put(self, data) -> None:
        piece = bytes(data)
        with self.cond:
            while self.buffered >= self.cap and self.reader_error is None:
                self.cond.wait(1.0)
            if self.reader_error is not None:
                raise self.reader_error
            if self.written + len(piece) > self.size:  # else it would wait for ever
                raise ValueError(f"the encoder wrote more than the {self.size} bytes planned")
            if piece:
                self.chunks.append(piece)
                self.buffered += len(piece)
                self.written += len(piece)
                self.cond.notify_all()

    def broken(self, exc: BaseException) -> None:
        with self.cond:
            self.reader_error = exc
            self.chunks.clear()
            self.head_off = self.buffered = 0
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.chunks.clear()
            self.head_off = self.buffered = 0

    def reader(self) -> "PipeReader":
        return PipeReader(self)


class PipeReader(Reader):
    """File-like over a Pipe: read(n) returns what is there, up to n bytes (at least one
    until `size`), waiting for the writer as needed; SourceError if the writer failed or
    wrote a different number of bytes than planned. `readinto` copies the pieces straight
    into the caller's buffer (a multipart upload's part), with no joined copy between."""

    #: Fed by the encoder as it runs: an upload may always hold one part for it
    #: (backends/budget.py), or the encoder could wait on an upload that waits on it.
    live = True

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.pos = 0

    def _take(self, out: memoryview | None, n: int) -> list[memoryview]:
        """Up to n bytes, at least one (n > 0): copied into `out` if given, else returned
        as views of the pieces."""
        p = self.pipe
        got, views = 0, []
        with p.cond:
            while not p.chunks:
                if p.error is not None:
                    raise SourceError("the encode feeding this upload stopped "
                                      f"({type(p.error).__name__})")
                if p.done:
                    raise SourceError(f"the encoder wrote {p.written} bytes; {p.size} were "
                                      "planned")
                p.cond.wait(1.0)
            while p.chunks and got < n:
                head = p.chunks[0]
                k = min(len(head) - p.head_off, n - got)
                piece = memoryview(head)[p.head_off:p.head_off + k]
                if out is not None:
                    out[got:got + k] = piece
                else:
                    views.append(piece)
                got += k
                p.head_off += k
                if p.head_off == len(head):
                    p.chunks.popleft()
                    p.head_off = 0
            p.buffered -= got
            p.cond.notify_all()
        self.pos += got
        return views

    def _want(self, n: int | None) -> int:
        left = self.pipe.size - self.pos
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int = -1) -> bytes:
        n = self._want(n)
        if n <= 0:
            return b""
        views = self._take(None, n)
        return views[0].tobytes() if len(views) == 1 else b"".join(views)

    def readinto(self, buf) -> int:
        out = memoryview(buf).cast("B")
        n = self._want(len(out))
        if n <= 0:
            return 0
        before = self.pos
        self._take(out, n)
        return self.pos - before
