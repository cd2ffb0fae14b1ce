"""A file written and hashed behind the decoder, in a thread of its own.

Restoring a large file is three streams of work over the same bytes: the download (and
the object's digest), the decode, and then hashing the original and writing it out.
Done by the decoder itself, the last (about as much CPU as the decode) waits behind it;
here a thread does it while the decoder goes on with the next chunk. The hash and the
write release the interpreter lock, so the two run at once.

The decoder can hand over a buffer without a copy: `take` lends one of a few buffers,
the decoder fills it, `give` queues it, and the thread returns it to the pool once its
bytes are hashed and written. `write` (the head, the tail, a decompressor's output)
keeps bytes objects as they are and copies anything else, which may change after.
Nothing here decides whether the output is used: the caller checks `n` and
`hexdigest()` after `finish`, and renames the file only then.
"""
from __future__ import annotations

import queue
import threading
from typing import BinaryIO

import numpy as np

from .. import digests

_END = object()


class WriteBehind:
    """`HashingWriter`'s job (write through, count, hash) done in a thread; `finish` waits
    for it and raises what the write raised (a full disk). Use as a context manager: on
    an error in the block the thread is stopped and nothing more is written."""

    def __init__(self, f: BinaryIO, alg: str, depth: int = 6) -> None:
        self.f, self.n, self.depth = f, 0, depth
        self.h = digests.new(alg)
        self._todo: queue.Queue = queue.Queue()
        self._free: queue.Queue = queue.Queue()
        self._made = 0
        self._error: BaseException | None = None
        self._stop = False
        self._finished = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="restore-write")
        self._thread.start()

    # --- the thread
    def _run(self) -> None:
        while (item := self._todo.get()) is not _END:
            data, n, pooled = item
            try:
                if self._error is None and not self._stop:
                    view = memoryview(data).cast("B")[:n]
                    self.h.update(view)
                    self.f.write(view)
                    self.n += n
            except BaseException as exc:  # raised in the decoder's thread by `_check`
                self._error = exc
            finally:
                if pooled:
                    self._free.put(data)

    # --- the decoder's side
    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def take(self, size: int) -> np.ndarray:
        """A buffer of at least `size` bytes to decode into, then `give`; waits for one to
        come back when all `depth` are queued."""
        self._check()
        while True:
            if self._made < self.depth and self._free.empty():
                self._made += 1
                return np.empty(size, dtype=np.uint8)
            buf = self._free.get()
            self._check()
            if len(buf) >= size:
                return buf
            self._made -= 1  # too small for this chunk: dropped, a larger one made

    def give(self, buf: np.ndarray, n: int) -> None:
        """Queue the first `n` bytes of a buffer from `take`; the buffer is not to be
        touched again until `take` lends it anew."""
        self._check()
        self._todo.put((buf, n, True))

    def write(self, data) -> int:
        self._check()
        n = len(memoryview(data).cast("B")) if not isinstance(data, bytes) else len(data)
        if n:
            self._todo.put((data if isinstance(data, bytes) else bytes(data), n, False))
        return n

    def finish(self) -> None:
        """Wait until everything given is hashed and written; raises a write failure."""
        if not self._finished:
            self._finished = True
            self._todo.put(_END)
            self._thread.join()
        self._check()

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop = True
            if not self._finished:
                self._finished = True
                self._todo.put(_END)
                self._thread.join()
            return
        self.finish()
