"""Sending objects to the stores: the shared bandwidth cap, one upload routine for every
operation (protect, the daemon, rekey), and the one way to replace a stored copy
(upload under a fresh name, then trash the old one).

Names are 128-bit random and recorded before the upload, so an object already under
a name is either our own earlier upload (accepted only if it holds our bytes) or, for
a name drawn just now, a bug.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from backends import AlreadyExists, StoreError

from .. import digests
from ..errors import IntegrityError
from ..logs import event
from ..placement import new_object_name
from ..state import ObjectRow
from ..tap import Reader
from ..archive import Progress, Archive


class Throttle:
    """A token bucket shared by all uploads: caps the average bytes per second.

    With `cancel` set (the daemon stopping), a waiting or next transfer raises
    Cancelled at once instead of sleeping on.
    """

    def __init__(self, rate: int | None, cancel: threading.Event | None = None) -> None:
        self.rate = rate
        self.cancel = cancel
        self.lock = threading.Lock()
        self.allowance = float(rate or 0)
        self.t = time.monotonic()

    def take(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.allowance = min(self.rate, self.allowance + (now - self.t) * self.rate)
            self.t = now
            self.allowance -= n
            wait = -self.allowance / self.rate if self.allowance < 0 else 0
        if wait <= 0:
            return
        if self.cancel is None:
            time.sleep(wait)
        elif self.cancel.wait(wait):
            raise Cancelled()


class Cancelled(Exception):
    """Raised inside a transfer or encode when the daemon is stopping."""


class UploadReader(Reader):
    """File-like handed to a store's put: exact size, optional throttle and progress.

    `ready(n)` (asked before a part buffer is taken, backends/budget.py) also waits out
    the throttle for those n bytes, in the same 64 KiB slices, so a part's buffer is not
    held through the pacing: filled at once, it goes out at once."""

    SLICE = 64 << 10

    def __init__(self, f: BinaryIO, throttle: Throttle, progress: Progress | None) -> None:
        self.f, self.throttle, self.progress = f, throttle, progress
        self.prepaid = 0  # bytes the throttle has let through ahead of the reads

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        data = self.f.read(self._slice(n))
        self._took(len(data))
        return data

    def readinto(self, buf) -> int:
        """Straight into the caller's buffer where the source can (files, Taps, Pipes)."""
        into = getattr(self.f, "readinto", None)
        if into is None:
            return super().readinto(buf)
        out = memoryview(buf).cast("B")
        got = into(out[: self._slice(len(out))])
        self._took(got or 0)
        return got or 0

    @property
    def live(self) -> bool:
        """Is the source fed by a running encoder (backends/budget.py)?"""
        return bool(getattr(self.f, "live", False))

    def ready(self, n: int) -> None:
        """Wait until `n` more bytes of the source can be read at once, and the throttle
        lets them through."""
        ready = getattr(self.f, "ready", None)
        if ready is not None:
            ready(n)
        if self.throttle.rate:
            while self.prepaid < n:
                k = min(self.SLICE, n - self.prepaid)
                self.throttle.take(k)
                self.prepaid += k

    def _slice(self, n: int) -> int:
        # Under a cap, small slices: every transfer then waits its turn in slices of
        # 64 KiB, so a small file is not held up behind megabytes of a large one.
        if not self.throttle.rate or self.prepaid >= n:
            return n
        return max(self.prepaid, min(n, self.SLICE))

    def _took(self, n: int) -> None:
        paid = min(n, self.prepaid)
        self.prepaid -= paid
        self.throttle.take(n - paid)
        if self.progress and n:
            self.progress(n)


@dataclass(frozen=True)
class Upload:
    """One object to send: a local file of exactly `size` bytes, to `store` as `name`."""

    file_id: str
    store: str
    name: str
    path: Path
    size: int
    digest: str
    digest_alg: str
    #: The name was recorded earlier (a crash may have landed it): an object already
    #: there is accepted if it holds our bytes. False: the name was just drawn.
    resumable: bool = True

    @classmethod
    def of_row(cls, v: Archive, obj: ObjectRow) -> "Upload":
        """A planned object row, sent from its staged file."""
        return cls(obj.file_id, obj.store, obj.name, v.staged_path(obj.file_id, obj.role,
                   obj.shard), obj.object_size, obj.digest, obj.digest_alg or "")


def send(v: Archive, job: Upload, throttle: Throttle, progress: Progress | None = None) -> None:
    """Upload one object; raises StoreError, OSError or IntegrityError."""
    store = v.store(job.store)
    try:
        with open(job.path, "rb") as f:
            if os.fstat(f.fileno()).st_size != job.size:
                raise IntegrityError(f"staged object for file {job.file_id} has the wrong size")
            store.put(job.name, UploadReader(f, throttle, progress), job.size)
    except AlreadyExists:
        if not job.resumable:  # 128-bit random names: only a bug gets here
            raise IntegrityError(f"store {job.store!r}: fresh object name already taken") from None
        # Our own earlier upload: a crash, or a retried put whose first answer was lost.
        if not _same_object(store, job):
            raise IntegrityError(f"store {job.store!r}: object {job.name} exists but does not "
                                 "hold the bytes planned for it") from None


def _same_object(store, job: Upload) -> bool:
    info = store.stat(job.name)
    if info.size != job.size:
        return False
    theirs = info.checksums.get(job.digest_alg)  # the store's own, when of the same kind
    if theirs:
        return theirs == job.digest
    h = digests.new(job.digest_alg)
    for chunk in store.get(job.name):
        h.update(chunk)
    return h.hexdigest() == job.digest


def send_all(v: Archive, jobs: list[Upload], throttle: Throttle | None = None,
             progress: Progress | None = None,
             on_sent: Callable[[Upload], None] | None = None) -> list[tuple[str, Exception]]:
    """Upload `jobs` in parallel (each store's health recorded); returns the failures as
    (store, error). `on_sent` is called for each upload that landed."""
    throttle = throttle or Throttle(v.cfg.schedule.bandwidth())
    failures: list[tuple[str, Exception]] = []

    def one(job: Upload) -> None:
        try:
            send(v, job, throttle, progress)
            if on_sent:
                on_sent(job)
            v.db.store_ok(job.store)
        except (StoreError, OSError, IntegrityError, KeyError) as exc:
            v.db.store_error(job.store, str(exc))
            event(logging.WARNING, "upload failed", file_id=job.file_id, store=job.store,
                  error=type(exc).__name__)
            failures.append((job.store, exc))

    if jobs:
        with ThreadPoolExecutor(max_workers=min(v.cfg.upload_workers, len(jobs))) as ex:
            list(ex.map(one, jobs))
    return failures


def upload_one(v: Archive, obj: ObjectRow, throttle: Throttle, progress: Progress | None = None,
               record: bool = True) -> None:
    """Upload one planned object; an object already there under its name is a finished upload.

    With record=False the caller records the confirmation (the daemon batches them: an
    upload whose record a crash lost is found again under its name and accepted)."""
    send(v, Upload.of_row(v, obj), throttle, progress)
    if record:
        v.db.set_objects_uploaded([obj.id])
        v.db.store_ok(obj.store)


def replace_copy(v: Archive, obj: ObjectRow, src: Path, digest: str,
                 checked: float | None = None) -> str:
    """Put `src` on `obj`'s store under a fresh name, point the row at it and trash the old
    name (never overwrite: a half-written copy must not replace a good one). Returns the
    new name."""
    size = src.stat().st_size
    job = Upload(obj.file_id, obj.store, new_object_name(), src, size, digest,
                 obj.digest_alg or "", resumable=False)
    send(v, job, Throttle(None))  # maintenance traffic, as before: not capped
    v.db.replace_object(obj, job.name, digest, object_size=size, checked=checked)
    v.db.store_ok(obj.store)
    return job.name
