"""Many members of the same packs, one request per pack (bulk restore, recover).

A bulk restore plans, before it starts, which members each file will fetch first; each
pack's wanted members become a few spans (`pack.plan_spans`), and a span is fetched once,
by the first file that needs it, while the others that need it wait for it. Every member
served from a span is still unmasked and checked against its own digest by the restorer,
exactly as after a ranged GET of its own; a member not planned (a second copy tried after
a bad first) is fetched on its own. A span is dropped when the last file that needs it is
done, so memory follows the packs in use, not the archive: a span larger than
SPILL_ABOVE, or one that would take what is held past MEMORY_BUDGET, goes to a temporary
file in the work area instead (unlinked at once: nothing is left behind by a crash).
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from backends import NotFound, StoreError

from ..pack import Span, plan_spans
from ..pack.source import RangeReader
from ..state import ObjectRow
from ..archive import Archive, Progress

MEMORY_BUDGET = 48 << 20  # spans held in memory at once, all files together
SPILL_ABOVE = 16 << 20    # a span larger than this (one pack_size) goes to a file

Key = tuple[str, str, int, int]  # store, pack name, member offset, member length


def member_key(obj: ObjectRow) -> Key:
    return obj.store, obj.name, obj.offset, obj.length


def fetch_range(v: Archive, store: str, name: str, start: int, n: int, sink,
                progress: Progress | None = None) -> None:
    """Write bytes [start, start + n) of a pack into `sink` (its `write`); a missing pack
    marks the pack and every member in it missing, once, then raises NotFound."""
    try:
        for chunk in v.store(store).get(name, start, n):
            sink.write(chunk)
            if progress:
                progress(len(chunk))
    except NotFound:
        v.db.set_pack_state(store, name, "missing")  # every member went with it
        raise


class _Window:
    """One span of one pack: fetched at most once, then read by offset in the pack."""

    def __init__(self, store: str, name: str, span: Span, users: set[str]) -> None:
        self.store, self.name, self.span, self.users = store, name, span, users
        self.lock = threading.Lock()
        self.fetched = False
        self.reserved = 0  # bytes of the memory budget it holds
        self.data: bytearray | None = None
        self.fd: int | None = None
        self.error: StoreError | None = None

    def reader(self) -> RangeReader:
        start = self.span.start
        if self.fd is not None:
            fd = self.fd
            return lambda off, ln: os.pread(fd, ln, off - start)
        view = memoryview(self.data if self.data is not None else b"")
        return lambda off, ln: view[off - start:off - start + ln]

    def drop(self) -> None:
        self.data = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Into:
    """A sink filling a preallocated buffer; what a short answer left unfilled is cut off
    (a member then reads short and fails as truncated, never as zeros)."""

    def __init__(self, buf: bytearray) -> None:
        self.buf, self.pos = buf, 0

    def write(self, data) -> None:
        n = len(memoryview(data))
        self.buf[self.pos:self.pos + n] = data
        self.pos += n

    def close(self) -> None:
        del self.buf[self.pos:]


class _IntoFile:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        pass


class PackWindows:
    """The spans a set of files' planned members lie in (see the module's docstring)."""

    def __init__(self, v: Archive, wanted: Iterable[ObjectRow], work: Path,
                 progress: Progress | None = None) -> None:
        self.v, self.work, self.progress = v, work, progress
        self._lock = threading.Lock()
        self._held = 0  # bytes of spans in memory
        self._by_key: dict[Key, _Window] = {}
        self._of_file: dict[str, list[_Window]] = {}
        self._rank: dict[str, int] = {}
        groups: dict[tuple[str, str], list[ObjectRow]] = {}
        for obj in wanted:
            if obj.packed:
                groups.setdefault((obj.store, obj.name), []).append(obj)
        for (store, name), objs in groups.items():
            for span in plan_spans([(o.offset, o.length) for o in objs], objs[0].object_size):
                members = [objs[i] for i in span.members]
                w = _Window(store, name, span, {o.file_id for o in members})
                rank = len(self._rank)
                for o in members:
                    self._by_key[member_key(o)] = w
                    self._of_file.setdefault(o.file_id, []).append(w)
                    self._rank.setdefault(o.file_id, rank)

    def rank(self, file_id: str) -> int:
        """Where a file comes in an order that keeps the files of one span together (files
        with no planned member last)."""
        return self._rank.get(file_id, len(self._rank))

    def window(self, obj: ObjectRow) -> tuple[int, RangeReader] | None:
        """(start, reader) of the fetched span holding `obj`, or None if `obj` was not
        planned. Raises what the span's fetch raised (NotFound, StoreError), as a ranged
        GET of the member would have."""
        w = self._by_key.get(member_key(obj))
        if w is None:
            return None
        with w.lock:
            if not w.fetched:
                self._fetch(w)
            if w.error is not None:
                raise w.error
            return w.span.start, w.reader()

    def _fetch(self, w: _Window) -> None:
        n = w.span.length
        with self._lock:
            if n <= SPILL_ABOVE and self._held + n <= MEMORY_BUDGET:
                w.reserved = n
                self._held += n
        w.fetched = True
        if w.reserved:
            w.data = bytearray(n)
            sink: _Into | _IntoFile = _Into(w.data)
        else:
            fd, path = tempfile.mkstemp(prefix=".span-", dir=self.work)
            os.unlink(path)  # open and nameless: gone with the process, whatever happens
            w.fd = fd
            sink = _IntoFile(fd)
        try:
            fetch_range(self.v, w.store, w.name, w.span.start, n, sink, self.progress)
            sink.close()
        except StoreError as exc:
            w.error = exc
            self._give_back(w)
        except BaseException:  # not the store's answer (a full disk): the next user retries
            w.fetched = False
            self._give_back(w)
            raise

    def _give_back(self, w: _Window) -> None:
        w.drop()
        with self._lock:
            self._held -= w.reserved
        w.reserved = 0

    def release(self, file_id: str) -> None:
        """`file_id` is done (restored or failed): spans no other file needs are dropped."""
        for w in self._of_file.pop(file_id, ()):
            with w.lock:
                w.users.discard(file_id)
                if not w.users and w.fetched:
                    self._give_back(w)

    def close(self) -> None:
        for fid in list(self._of_file):
            self.release(fid)
