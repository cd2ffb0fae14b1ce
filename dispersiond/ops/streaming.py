"""An object read while it downloads: a large replicated file is decoded as its public
object arrives, with no temporary copy of the object on disk.

Restoring through a temporary copy costs the download, then writing the object to disk,
then reading it back for the decode, one after the other. Here a thread downloads (and
counts and hashes every byte, as `fetch_object` always does) at most `cap` bytes ahead
of the decoder, which reads from memory. The decoder may read bytes before their
object's digest is known: that is safe because nothing it writes is used before the
end (the output is a temporary file, renamed only after the codec's authentication of
every chunk, the original's digest and then the object's own size and digest passed).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class _Stopped(Exception):
    """The reader went away: the download stops at its next piece."""


class ObjectStream:
    """Reader side: `readinto`/`read` as a file; `drain` reads to the end and raises
    what the download raised (a missing object, a store failure, a digest mismatch).
    Writer side (the download thread): `write`."""

    def __init__(self, fetch: Callable[["ObjectStream"], None], cap: int = 16 << 20) -> None:
        self.cap = cap
        self._cond = threading.Condition()
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fetch,), daemon=True,
                                        name="restore-download")
        self._thread.start()

    # --- the download thread
    def _run(self, fetch: Callable[["ObjectStream"], None]) -> None:
        try:
            fetch(self)
        except BaseException as exc:  # handed to the reader, which raises it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        with self._cond:
            while self._buffered >= self.cap and not self._stopped:
                self._cond.wait()
            if self._stopped:
                raise _Stopped()
            if view:
                self._chunks.append(view)
                self._buffered += len(view)
                self._cond.notify_all()
        return len(view)

    # --- the reader
    def readinto(self, buf) -> int:
        out = memoryview(buf).cast("B")
        with self._cond:
            while not self._chunks and not self._done:
                self._cond.wait()
            if not self._chunks:
                if self._error is not None:
                    raise self._error
                return 0
            head = self._chunks[0]
            n = min(len(head), len(out))
            out[:n] = head[:n]
            if n == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[n:]
            self._buffered -= n
            self._cond.notify_all()
        return n

    def view(self, n: int, scratch) -> memoryview:
        """The next `n` bytes: a view of the piece the download handed over when one holds
        them all (no copy; the pieces are never written to again), else copied into
        `scratch` (at least `n` bytes). Shorter only at the end of the object."""
        with self._cond:
            while not self._chunks and not self._done:
                self._cond.wait()
            if self._chunks and len(self._chunks[0]) >= n:
                head = self._chunks[0]
                if len(head) == n:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[n:]
                self._buffered -= n
                self._cond.notify_all()
                return head[:n]
        out = memoryview(scratch).cast("B")[:n]
        got = 0
        while got < n:
            k = self.readinto(out[got:])
            if not k:
                break
            got += k
        return out[:got]

    def read(self, n: int = -1) -> bytes:
        """`n` bytes, fewer only at the end (as a buffered file reads); -1: what is here."""
        buf = bytearray(n if n >= 0 else self.cap)
        if n < 0:
            return bytes(buf[:self.readinto(buf)])
        view, got = memoryview(buf), 0
        while got < n and (k := self.readinto(view[got:])):
            got += k
        return bytes(buf[:got])

    def skip(self, n: int) -> None:
        """Discard `n` bytes (what lies before the fragment in its object)."""
        buf = bytearray(min(n, 1 << 20))
        while n:
            got = self.readinto(memoryview(buf)[:min(n, len(buf))])
            if not got:
                return
            n -= got

    def drain(self) -> None:
        """Read to the end: the download's verdict on the whole object."""
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass

    def close(self) -> None:
        """Stop the download if it still runs, and wait for its thread."""
        with self._cond:
            self._stopped = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()
        self._thread.join()
