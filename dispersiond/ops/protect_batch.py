"""`put` of many files on the daemon's engine: batches, not one file after another.

A batch of admitted files is encoded in parallel (a small pool; large files one at a
time beside it, with their early or direct uploads), every pending object of the batch
is sent at once (`send_objects`: the small fragments share one pack per store and kind),
the files are committed in one transaction and finished after one manifest backup. Each
step is the one the single-file path (`protect.resume`) and the daemon use, and each is
recorded, so a crash anywhere leaves files that `put --resume` (or the daemon) finishes,
none lost and none twice.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..archive import Archive, Progress
from ..errors import DispersiondError
from ..state import FileState
from .encode import EARLY_UPLOAD_MIN
from .finalize import finish
from .packing import send_objects
from .protect import commit_many, encode, encode_early, upload_failed
from .upload import Throttle

#: A batch: at most this many files and bytes of originals. Its staged copies wait on the
#: device until its uploads, and each batch costs one manifest backup and one pack per
#: store and kind (more once a pack reaches pack.pack_size).
BATCH_FILES = 1000
BATCH_BYTES = 128 << 20
#: Small files are encoded in chunks on a pool this wide: their cost is mostly fsyncs and
#: file creation, which overlap (the journal commits them together) while the CPU is free.
ENCODERS = 4
#: One chunk: the bytes a worker holds in flight (so ENCODERS x CHUNK_BYTES in all, plus
#: the one large file encoded beside them).
CHUNK_FILES = 64
CHUNK_BYTES = 8 << 20


def batches(sizes: Iterable[tuple[str, int]], files: int, size: int) -> list[list[str]]:
    """Cut (file_id, size) pairs, in their order, into batches of at most `files` files and
    `size` bytes (a file larger than `size` is a batch of its own). Pure."""
    out: list[list[str]] = []
    n = 0
    for fid, s in sizes:
        if not out or len(out[-1]) >= files or (n + s > size and out[-1]):
            out.append([])
            n = 0
        out[-1].append(fid)
        n += s
    return out


@dataclass
class BatchResult:
    """What became of a batch's files: an error per file that is not protected (it stays
    for a resume), the files the finish step handled (bundles, done)."""

    errors: dict[str, str] = field(default_factory=dict)
    handled: dict[str, dict] = field(default_factory=dict)


def protect_batch(v: Archive, fids: list[str], throttle: Throttle,
                  progress: Progress | None = None,
                  grant_errors: list[str] | None = None) -> BatchResult:
    """Every remaining step for a batch of admitted files (claimed, encoded or committed):
    encode, upload, commit, one manifest backup, finish. One bad file never stops the
    others: its error is in the result and its state is kept."""
    res = BatchResult()
    rows = {fid: v.db.file(fid) for fid in fids}
    claimed = [(fid, f.size) for fid, f in rows.items() if f.state == FileState.CLAIMED]
    for fid, exc in encode_all(v, claimed, throttle, progress).items():
        if exc is not None:
            res.errors[fid] = encode_error(exc)
    live = {fid for fid in fids if fid not in res.errors}
    pending = [o for o in v.db.upload_queue() if o.file_id in live]
    failures = send_objects(v, pending, throttle, progress)
    commit_many(v, [v.db.file(fid) for fid in fids if fid in live])
    first: dict[str, Exception] = {}
    for store, exc in failures:
        first.setdefault(store, exc)
    short: dict[str, set[str]] = {}  # file -> the stores it still lacks a copy on
    for o in v.db.upload_queue():
        if o.file_id in live:
            short.setdefault(o.file_id, set()).add(o.store)
    for fid, stores in short.items():
        try:
            upload_failed(v, fid, rows[fid].attempts, v.db.file(fid).state, [
                (s, first.get(s) or DispersiondError("not sent")) for s in sorted(stores)])
        except DispersiondError as exc:
            res.errors[fid] = str(exc)
    protected = [fid for fid in fids if fid not in res.errors]
    if protected:  # as the daemon after its uploads: backup, grants, done
        res.handled = finish(v, protected, grant_errors=grant_errors)
    return res


def encode_error(exc: BaseException) -> str:
    """One file's encode failure, as the user reads it (its state is kept: claimed)."""
    if isinstance(exc, DispersiondError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}; nothing of it was protected"
    return f"encoding failed ({type(exc).__name__}: {exc}); nothing of it was protected"


def encode_all(v: Archive, claimed: list[tuple[str, int]], throttle: Throttle,
               progress: Progress | None = None) -> dict[str, BaseException | None]:
    """Encode claimed files: the small ones in chunks on the pool, the large ones one at a
    time in this thread (their uploads start while they are encoded). Per file: None, or
    the error that stopped it."""
    small = [(fid, s) for fid, s in claimed if s < EARLY_UPLOAD_MIN]
    large = [fid for fid, s in claimed if s >= EARLY_UPLOAD_MIN]
    out: dict[str, BaseException | None] = {}
    with ThreadPoolExecutor(ENCODERS, thread_name_prefix="put-encode") as pool:
        running = [pool.submit(encode_chunk, v, chunk, progress)
                   for chunk in batches(small, CHUNK_FILES, CHUNK_BYTES)]
        for fid in large:
            out[fid] = _outcome(lambda fid=fid: encode_early(v, fid, throttle, progress))
        for fut in running:
            out.update(fut.result())
    return out


def encode_chunk(v: Archive, fids: list[str],
                 progress: Progress | None = None) -> dict[str, BaseException | None]:
    """Encode small files, each staged for the batch's uploads; per file: None or its
    error. (The one call site for a batched encode with one durability barrier.)"""
    return {fid: _outcome(lambda fid=fid: encode(v, fid, progress)) for fid in fids}


def _outcome(step: Callable[[], None]) -> BaseException | None:
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - this file's own outcome; the others go on
        return exc
    return None
