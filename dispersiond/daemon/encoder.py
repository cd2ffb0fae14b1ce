"""Encodes: arrival order, a small pool, retries on the one backoff, and the hand-off
of a large file to early (or direct) uploads while it is encoded.

Small files (below ops/encode.BATCH_FILE_MAX) go to the pool in batches: one task
encodes a batch (`encode_many`: one durability barrier, one transaction) and reports
it in one Encoded event; a file of it that failed is booked alone, as any other."""
from __future__ import annotations

import collections
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from backends import StoreError
from backends.backoff import Backoff

from .. import inbox as ib
from ..config import PublicPolicy
from ..logs import event, log
from ..ops.encode import BATCH_FILE_MAX, EARLY_UPLOAD_MIN, EarlyUploads, batches
from ..ops.protect import SourceGone, encode, encode_many
from ..ops.upload import Cancelled, Throttle
from ..tap import DirectUploadFailed
from ..archive import Archive
from .events import Encoded, Event
from .intake import SpaceGate
from .uploader import Uploader

#: Files encoded alone (1 MiB and up) at once: CPU and local disk bound.
ENCODERS = max(1, min(2, os.cpu_count() or 1))
#: Batches of small files go to a thread of their own, at most this many in flight (one
#: encoding, one queued behind it, so the thread never waits for the loop). A small
#: file's encode is Python holding the GIL: two batch threads only took it from each
#: other and from the upload threads (1,000 x 16 KiB through the daemon, medians of five
#: runs: 2.77 s and 2.92 s of CPU with two, 2.46 s and 2.49 s with one; BENCHMARKS.md).
BATCHES_AHEAD = 2
#: Encode attempts before a file that keeps failing (not for lack of space) is quarantined.
ENCODE_ATTEMPTS = 3
#: Room asked for beyond the estimate after an encode ran out of space.
SPACE_SLACK = 64 << 20


def staging_need(public: PublicPolicy, size: int, direct: bool) -> int:
    """Local bytes an encode stages: the public fragment (n/k of it for erasure),
    padding, the private container, and slack. With direct uploads (every public store
    healthy), only the private container (an eighth, plus its header) is written."""
    if direct:
        return int(size * 0.15) + (1 << 20)
    factor = public.n / public.k if public.mode == "erasure" else 1.0
    return int(size * factor * 1.15) + (1 << 20)


def batch_need(public: PublicPolicy, sizes: list[int]) -> int:
    """`staging_need` of a batch of small files: each one's bytes, the slack once."""
    slack = 1 << 20
    return slack + sum(staging_need(public, size, False) - slack for size in sizes)


class Encoder:
    """The files waiting to be encoded and the encodes under way."""

    def __init__(self, v: Archive, uploader: Uploader, gate: SpaceGate, throttle: Throttle,
                 put: Callable[[Event], None], check_cancel: Callable[[int], None],
                 quarantine: Callable[[str, str], None], maintenance: ThreadPoolExecutor, *,
                 retry_base: float, retry_max: float) -> None:
        self.v, self.uploader, self.gate, self.throttle = v, uploader, gate, throttle
        self.put, self.check_cancel, self.quarantine = put, check_cancel, quarantine
        self.retry_base, self.retry_max = retry_base, retry_max
        self.waiting: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.encoding: set[str] = set()
        self.early: set[str] = set()  # of those, the one uploading while it is encoded
        self.retry: dict[str, Backoff] = {}  # files whose last encode failed
        self.tasks = 0  # on the pool, running or queued: files encoded alone
        self.batches = 0  # on the batch thread, running or queued
        self.pool = ThreadPoolExecutor(ENCODERS, thread_name_prefix="encode")
        self.batch_pool = ThreadPoolExecutor(1, thread_name_prefix="encode-batch")
        self.early_pool = ThreadPoolExecutor(1, thread_name_prefix="early-upload")
        self.maintenance = maintenance  # the daemon's one background housekeeping thread

    def add(self, fid: str, size: int) -> None:
        self.waiting[fid] = size

    def reload(self, claimed: list[tuple[str, int]]) -> None:
        """The database's claimed files (the rows decide), minus those being encoded."""
        self.waiting = collections.OrderedDict(
            (fid, size) for fid, size in claimed if fid not in self.encoding)

    def need(self, size: int, early: EarlyUploads | None) -> int:
        return staging_need(self.v.cfg.public, size,
                            early is not None and early.sends_directly(self.v.cfg))

    def start(self, stopping: bool) -> None:
        """Files in arrival order. Small ones go to the pool in batches. A large one
        uploads while it is encoded, on its own thread (that can take as long as its
        upload), if that thread is free; otherwise, like every other file, it is encoded
        by the pool and uploaded after."""
        if stopping or not self.waiting:
            return
        if self.tasks > ENCODERS and self.early and self.batches >= BATCHES_AHEAD:
            return  # every thread busy: nothing can start
        now = time.monotonic()
        ready = ((fid, size) for fid, size in list(self.waiting.items())
                 if (b := self.retry.get(fid)) is None or b.wait(now) <= 0)
        for group in batches(ready):
            if self.gate.paused is not None:
                return
            fid, size = group[0]
            if size < BATCH_FILE_MAX:
                if not self._start_batch(group):
                    return
                continue
            early = self._early() if size >= EARLY_UPLOAD_MIN and not self.early else None
            if early is None and self.tasks > ENCODERS:
                return  # the pool is busy (one task queued ahead)
            need = self.need(size, early)
            if not self.gate.allows(need):
                self.gate.require(need)
                return
            del self.waiting[fid]
            self.encoding.add(fid)
            if early is not None:
                self.early.add(fid)
                self.early_pool.submit(self._task, fid, early)
            else:
                self.tasks += 1
                self.pool.submit(self._task, fid, None)

    def _start_batch(self, batch: list[tuple[str, int]]) -> bool:
        """Hand a batch of small files to the batch thread; False if it cannot take it now
        (busy, or too little space: the gate then waits for it)."""
        if self.batches >= BATCHES_AHEAD:
            return False
        need = batch_need(self.v.cfg.public, [size for _, size in batch])
        if not self.gate.allows(need):
            self.gate.require(need)
            return False
        fids = [fid for fid, _ in batch]
        for fid in fids:
            del self.waiting[fid]
            self.encoding.add(fid)
        self.batches += 1
        self.batch_pool.submit(self._batch_task, fids)
        return True

    def _early(self) -> EarlyUploads | None:
        """Stores a large file may start uploading to while it is encoded: the healthy
        ones, inside the upload window."""
        stores = self.uploader.healthy()
        if not stores or not self.uploader.is_open():
            return None
        return EarlyUploads(stores, self.throttle, self.check_cancel)

    def _task(self, fid: str, early: EarlyUploads | None) -> None:
        started = time.monotonic()
        try:
            encode(self.v, fid, self.check_cancel, early)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.put(Encoded.one(fid, started, exc))
            return
        self.put(Encoded.one(fid, started))

    def _batch_task(self, fids: list[str]) -> None:
        started = time.monotonic()
        try:
            outcomes = encode_many(self.v, fids, self.check_cancel)
        except BaseException as exc:  # noqa: BLE001 - the whole batch: nothing recorded
            outcomes = dict.fromkeys(fids, exc)
        self.put(Encoded(tuple(outcomes.items()), started, batch=True))

    def _again(self, fid: str) -> Backoff:
        """Back the file off (the one policy, no jitter: one device, one file)."""
        b = self.retry.setdefault(fid, Backoff(self.retry_base, self.retry_max, jitter="none"))
        b.fail(time.monotonic())
        f = self.v.db.file(fid)
        self.waiting[fid] = f.size if f else 0
        return b

    def on_encoded(self, ev: Encoded, cancelling: bool) -> list[str]:
        """Book the outcomes of one task (main thread: one file, or a batch); returns the
        files whose uploads may be done already (early uploads), worth a look."""
        early = [fid for fid in ev.fids if fid in self.early]
        if ev.batch:
            self.batches = max(0, self.batches - 1)
        elif not early:
            self.tasks = max(0, self.tasks - 1)  # a pool task (else the early-upload one)
        ok: list[str] = []
        failed: list[tuple[str, BaseException]] = []
        for fid, exc in ev.outcomes:
            self.encoding.discard(fid)
            self.early.discard(fid)
            if exc is None:
                self.retry.pop(fid, None)
                ok.append(fid)
            else:
                failed.append((fid, exc))
        if ok:
            self.uploader.enqueue(self.v.db.objects_of(ok, states=("pending",)))
        if failed:
            self.maintenance.submit(self.v.empty_trash)  # early uploads of the failed encode
        for fid, exc in failed:
            self._failed(fid, exc, ev.started, cancelling)
        return [fid for fid in early if fid in ok]

    def _failed(self, fid: str, exc: BaseException, started: float, cancelling: bool) -> None:
        """One file's encode failed: retry it (backing off), or set it aside."""
        if isinstance(exc, Cancelled) or cancelling:
            return
        shutil.rmtree(self.v.work_dir(fid), ignore_errors=True)
        if isinstance(exc, DirectUploadFailed) and isinstance(exc.cause, StoreError):
            # Not the file's fault: the store backs off, so the next encode (at once) stages
            # the object for it and sends the others early from the staged files.
            self.uploader.store_failed(exc.store, started, exc.cause)
            self.v.db.update_file(fid, error=str(exc)[:500])
            f = self.v.db.file(fid)
            self.waiting[fid] = f.size if f else 0
            return
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            f = self.v.db.file(fid)
            self.gate.require(self.need(f.size if f else 0, None) + SPACE_SLACK)
            self._again(fid)
            return
        if isinstance(exc, SourceGone):
            self.quarantine(fid, f"the file vanished or cannot be read: {exc}")
            return
        f = self.v.db.file(fid)
        attempts = (f.attempts if f else 0) + 1
        reason = f"{type(exc).__name__}: {exc}"
        if attempts >= ENCODE_ATTEMPTS:
            self.retry.pop(fid, None)
            self.quarantine(fid, f"encoding failed {attempts} times; last: {reason}")
            return
        self.v.db.update_file(fid, attempts=attempts, error=reason)
        b = self._again(fid)
        event(logging.WARNING, "encode failed; will retry", file_id=fid, error=type(exc).__name__,
              retry_in=round(b.wait(time.monotonic()), 1))

    def shutdown(self) -> None:
        for pool in (self.pool, self.batch_pool, self.early_pool):
            pool.shutdown(wait=False, cancel_futures=True)


def quarantine(v: Archive, folder, fid: str, reason: str) -> None:
    """Set a file aside; if the move fails the row is 'failed' already: never retried."""
    try:
        ib.quarantine_file(v, fid, reason, folder)
    except OSError as exc:
        log.error("file %s is marked failed but could not be moved to the quarantine "
                  "folder (%s); it stays in the state directory", fid, exc)
