"""`put` of many files on the daemon's engine: batches, not one file after another.

A batch of admitted files is encoded in parallel (a small pool; large files one at a
time beside it, with their early or direct uploads). Its pending objects are sent as the
encodes go (`send_objects`: small fragments share one pack per store and kind): once
SEND_BYTES of small files are encoded their packs go up while the next chunks encode,
as the daemon flushes its pack buffers; what is left is sent once every encode is done.
The files are committed in one transaction and finished after one manifest backup. Each
step is the one the single-file path (`protect.resume`) and the daemon use, and each is
recorded, so a crash anywhere leaves files that `put --resume` (or the daemon) finishes,
none lost and none twice.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from threading import Lock
from typing import Callable, Iterable

from ..archive import Archive, Progress
from ..errors import DispersiondError
from ..state import FileRow, FileState
from .encode import BATCH_FILE_MAX, EARLY_UPLOAD_MIN, batches
from .finalize import finish
from .packing import send_objects
from .protect import commit_many, encode, encode_early, encode_many, upload_failed
from .upload import Throttle

#: A batch: at most this many files and bytes of originals. Its staged copies wait on the
#: device until its uploads, and each batch costs one manifest backup and one pack per
#: store and kind (more once a pack reaches pack.pack_size).
BATCH_FILES = 1000
BATCH_BYTES = 128 << 20
#: Memory `put` may hold public fragments in (held.py): the packs of SEND_BYTES go up
#: while the next chunks encode, so a few times that is held at once; past this (slow
#: stores), the rest of a batch is staged on disk as before.
PUT_HOLD_BYTES = 24 << 20
#: Small files encoded (original bytes) whose packs are sent at once, while the next
#: chunks encode: each group costs one pack per store and kind (a request, a pack file
#: built and a commit each), and the last one is the tail no encode overlaps. 1,000 x
#: 16 KiB: two groups (2 MiB groups cost more CPU than they overlapped, BENCHMARKS.md).
SEND_BYTES = 8 << 20
#: Groups in flight at once: one's private pack goes up beside the next one's public
#: pack (a file's container follows its own public fragments, held.py).
SENDERS = 2
#: Encodes at once: small files in chunks (`encode_many`: one durability barrier and one
#: transaction a chunk), medium ones alone. Two: one chunk's barrier waits on its fsyncs
#: while the other encodes; more only share the GIL, and starve the pack senders of it
#: (1,000 x 16 KiB, warm, three runs each: 4 encoders 2.54-2.71 s and 2.9-3.1 s of CPU,
#: 2 encoders 2.20-2.39 s and 2.5-2.6 s, 1 encoder 2.24-2.42 s; BENCHMARKS.md). In flight
#: at most ENCODERS chunks (8 MiB) or medium files (below EARLY_UPLOAD_MIN), plus the one
#: large file encoded beside them.
ENCODERS = 2


def put_batches(sizes: Iterable[tuple[str, int]], files: int = BATCH_FILES,
                size: int = BATCH_BYTES) -> list[list[str]]:
    """Cut (file_id, size) pairs, in their order, into batches of at most `files` files
    and `size` bytes, whatever each file's size (a file larger than `size` is a batch of
    its own). Pure."""
    out: list[list[str]] = []
    held = 0
    for fid, n in sizes:
        if not out or len(out[-1]) >= files or (held + n > size and out[-1]):
            out.append([])
            held = 0
        out[-1].append(fid)
        held += n
    return out


@dataclass
class BatchResult:
    """What became of a batch's files: the state each is in now, an error for each that
    is not protected (it stays for a resume), what the finish step handled (bundles)."""

    states: dict[str, FileState] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    handled: dict[str, dict] = field(default_factory=dict)


def protect_batch(v: Archive, rows: dict[str, FileRow], throttle: Throttle,
                  progress: Progress | None = None,
                  grant_errors: list[str] | None = None) -> BatchResult:
    """Every remaining step for a batch of admitted files (`rows`: claimed, encoded or
    committed, as read before): encode, upload, commit, one manifest backup, finish.
    One bad file never stops the others: its error is in the result, its state kept."""
    res = BatchResult()
    claimed = [(fid, f.size) for fid, f in rows.items() if f.state == FileState.CLAIMED]
    with Sender(v, throttle, progress) as sender:
        for fid, exc in encode_all(v, claimed, throttle, progress, sender.add).items():
            if exc is not None:
                res.errors[fid] = encode_error(exc)
        live = [fid for fid in rows if fid not in res.errors]
        wanted = set(live)
        sender.send([fid for fid in live if fid not in sender.given])  # the rest at once
    failures = sender.failures
    now = v.db.files_by_id(live)  # as encoded: what commit_many needs of each
    commit_many(v, list(now.values()))
    first: dict[str, Exception] = {}
    for store, exc in failures:
        first.setdefault(store, exc)
    short: dict[str, set[str]] = {}  # file -> the stores it still lacks a copy on
    for o in v.db.upload_queue():
        if o.file_id in wanted:
            short.setdefault(o.file_id, set()).add(o.store)
    for fid, stores in short.items():
        try:
            upload_failed(v, fid, rows[fid].attempts, v.db.file(fid).state, [
                (s, first.get(s) or DispersiondError("not sent")) for s in sorted(stores)])
        except DispersiondError as exc:
            res.errors[fid] = str(exc)
    protected = [fid for fid in live if fid not in res.errors]
    if protected:  # as the daemon after its uploads: backup, grants, done
        res.handled = finish(v, protected, grant_errors=grant_errors)
    for fid, f in rows.items():
        h = res.handled.get(fid)
        if h is not None:  # committed, and perhaps done now
            res.states[fid] = FileState.DONE if h["done"] else FileState.COMMITTED
        else:  # as it was encoded (or, if its encode failed, as it was)
            res.states[fid] = now[fid].state if fid in now else f.state
    return res


def encode_error(exc: BaseException) -> str:
    """One file's encode failure, as the user reads it (its state is kept: claimed)."""
    if isinstance(exc, DispersiondError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}; nothing of it was protected"
    return f"encoding failed ({type(exc).__name__}: {exc}); nothing of it was protected"


def encode_all(v: Archive, claimed: list[tuple[str, int]], throttle: Throttle,
               progress: Progress | None = None,
               encoded: Callable[[list[str], int], None] | None = None,
               ) -> dict[str, BaseException | None]:
    """Encode claimed files: on the pool the small ones in chunks and the medium ones one
    each, the large ones one at a time in this thread (their uploads start while they are
    encoded). Per file: None, or the error that stopped it. `encoded` hears of each
    chunk's files once they are recorded (their ids and original bytes), on the pool."""
    small = [(fid, s) for fid, s in claimed if s < BATCH_FILE_MAX]
    medium = [fid for fid, s in claimed if BATCH_FILE_MAX <= s < EARLY_UPLOAD_MIN]
    large = [fid for fid, s in claimed if s >= EARLY_UPLOAD_MIN]
    sizes = dict(claimed)
    out: dict[str, BaseException | None] = {}
    with ThreadPoolExecutor(ENCODERS, thread_name_prefix="put-encode") as pool:
        chunks = [pool.submit(encode_chunk, v, [fid for fid, _ in chunk], sizes, progress,
                              encoded)
                  for chunk in batches(small)]
        alone = {fid: pool.submit(_outcome, partial(encode, v, fid, progress))
                 for fid in medium}
        for fid in large:
            out[fid] = _outcome(partial(encode_early, v, fid, throttle, progress))
        for fut in chunks:
            out.update(fut.result())
        out.update((fid, fut.result()) for fid, fut in alone.items())
    return out


def encode_chunk(v: Archive, fids: list[str], sizes: dict[str, int],
                 progress: Progress | None = None,
                 encoded: Callable[[list[str], int], None] | None = None,
                 ) -> dict[str, BaseException | None]:
    """Small files encoded as one chunk (one barrier, one transaction); per file: None or
    its error. A failure of the chunk itself (its barrier or transaction) is each file's."""
    try:
        out = encode_many(v, fids)
    except Exception as exc:  # noqa: BLE001 - nothing of the chunk was recorded
        return {fid: exc for fid in fids}
    done = [fid for fid, exc in out.items() if exc is None]
    if progress:
        progress(sum(sizes[fid] for fid in done))
    if encoded and done:
        encoded(done, sum(sizes[fid] for fid in done))
    return out


class Sender:
    """A batch's pending objects sent in groups of files while the batch is still being
    encoded: `add` collects encoded small files and starts a group's `send_objects` once
    they reach SEND_BYTES; `send` starts one now. Leaving the block waits for every group;
    `failures` then holds each store's errors, `given` the files handed over."""

    def __init__(self, v: Archive, throttle: Throttle, progress: Progress | None = None,
                 flush_at: int | None = None) -> None:
        self.v, self.throttle, self.progress = v, throttle, progress
        self.flush_at = SEND_BYTES if flush_at is None else flush_at
        self.failures: list[tuple[str, Exception]] = []
        self.given: set[str] = set()
        self._lock = Lock()
        self._waiting: list[str] = []
        self._bytes = 0
        self._running: list[Future] = []
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="put-send")

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc) -> None:
        try:
            for fut in self._running:
                fut.result()
        finally:
            self._pool.shutdown()

    def add(self, fids: list[str], size: int) -> None:
        """Encoded small files (`size`: their original bytes), sent once enough wait."""
        with self._lock:
            self._waiting += fids
            self._bytes += size
            if self._bytes < self.flush_at:
                return
            group, self._waiting, self._bytes = self._waiting, [], 0
        self.send(group)

    def send(self, fids: list[str]) -> None:
        """Start sending the pending objects of `fids` (and of what `add` holds back)."""
        with self._lock:
            group, self._waiting, self._bytes = [*self._waiting, *fids], [], 0
            self.given.update(group)
        if group:
            self._running.append(self._pool.submit(self._one, group))

    def _one(self, fids: list[str]) -> None:
        order = {fid: i for i, fid in enumerate(fids)}
        objs = sorted(self.v.db.objects_of(fids, states=("pending",)),
                      key=lambda o: (order[o.file_id], o.id))
        failed = send_objects(self.v, objs, self.throttle, self.progress)
        with self._lock:
            self.failures += failed


def _outcome(step: Callable[[], None]) -> BaseException | None:
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - this file's own outcome; the others go on
        return exc
    return None
