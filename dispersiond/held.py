"""Public fragments of small files held in memory between their encode and their pack
(docs/FORMAT.md §8, "Crash safety"): no staged copy is written, fsynced, read back and
removed for them.

What the registry promises the crash protocol: a file's private container is not packed
while one of its public fragments is held here (`waiting`), so a file whose held bytes
were lost (the process died) has no private half on any store and is simply encoded
again (`ops/held_recovery.py`). A held fragment leaves the registry once its member is
recorded in a pack on every public store it is bound for (`landed`), or by being
written out as an ordinary staged copy, fsynced (`spill`: a pack that failed), after
which it is retried from disk like any other staged object.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import atomic_output, sync_batch

#: Bytes of public fragments held at most (a process-wide budget; past it, small files
#: are staged on disk as before). The daemon flushes a pack buffer at half of it, so a
#: pack goes up while the next half is encoded.
HOLD_BYTES = 6 << 20


@dataclass
class _Entry:
    parts: dict[str, bytes]  # staged file name ("puf", "shard-<i>") -> padded bytes
    stores: set[str] = field(default_factory=set)  # public stores still to land on
    reserved: int = 0


class Held:
    """The held fragments of one process (one per Archive); thread-safe."""

    def __init__(self, limit: int = HOLD_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._by_file: dict[str, _Entry] = {}

    def reserve(self, n: int) -> bool:
        """Take `n` bytes of the budget for one file's fragments; False if it is spent."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        """Give back a reservation that was never held (the encode failed)."""
        with self._lock:
            self.used = max(0, self.used - n)

    def hold(self, fid: str, parts: dict[str, bytes], stores: set[str], reserved: int) -> None:
        with self._lock:
            self._by_file[fid] = _Entry(dict(parts), set(stores), reserved)

    def part(self, fid: str, key: str) -> bytes | None:
        with self._lock:
            e = self._by_file.get(fid)
            return None if e is None else e.parts.get(key)

    def waiting(self, fid: str) -> bool:
        """Is a public fragment of `fid` held only here (its container must wait)?"""
        with self._lock:
            return fid in self._by_file

    def files(self) -> set[str]:
        with self._lock:
            return set(self._by_file)

    def landed(self, fid: str, store: str) -> None:
        """`fid`'s public member is recorded in a pack on `store`."""
        with self._lock:
            e = self._by_file.get(fid)
            if e is None:
                return
            e.stores.discard(store)
            if not e.stores:
                self._drop(fid)

    def drop(self, fid: str) -> None:
        with self._lock:
            self._drop(fid)

    def _drop(self, fid: str) -> None:
        e = self._by_file.pop(fid, None)
        if e is not None:
            self.used = max(0, self.used - e.reserved)

    def spill(self, work: Path, fids: set[str]) -> list[str]:
        """Write the held fragments of `fids` out as staged copies (`work/<fid>/<name>`),
        then make them durable with one barrier (every file, each folder), and only then
        stop holding them; returns the files spilled. If a write or the barrier fails,
        OSError is raised and what was not made durable stays held."""
        written: list[str] = []
        files: list[Path] = []
        first: OSError | None = None
        for fid in sorted(fids):
            with self._lock:
                e = self._by_file.get(fid)
                parts = dict(e.parts) if e else {}
            if not parts:
                continue
            folder = work / fid
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                for name, data in parts.items():
                    with atomic_output(folder / name, sync=False) as f:
                        f.write(data)
                    files.append(folder / name)
            except OSError as exc:
                first = first or exc
                continue
            written.append(fid)
        if written:
            sync_batch(files, [*(work / fid for fid in written), work])
            for fid in written:
                self.drop(fid)
        if first is not None:
            raise first
        return written
