"""The `protect` operation, step by step: admit -> encode -> upload -> commit -> finish.

Each step is idempotent and recorded in the state database, so the daemon (or
a re-run of `put`) resumes any file from the step it reached, without losing it
and without leaving duplicate objects: object names are chosen and recorded
before any upload, uploads are conditional creates, and an object that already
exists under its recorded name is a finished upload. Staging and early uploads live
in ops/encode.py, sending in ops/upload.py, what follows the uploads in ops/finalize.py.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ..codec import se2
from ..errors import DispersiondError
from ..layout import Layout
from ..logs import batch_event, event, log
from ..state import FileRow, FileState
from ..tap import DirectUploadFailed
from ..archive import Progress, Archive
from ..fsutil import read_whole, sync_batch
from .encode import (BATCH_FILE_MAX, EARLY_UPLOAD_MIN, EarlyUploadRun, EarlyUploads, Staged,
                     abandon_planned, batches, plan_rows, stage, staged_sizes)
from .finalize import finish
from .packing import send_objects
from .upload import Cancelled, Throttle, upload_one

__all__ = ["BATCH_FILE_MAX", "EARLY_UPLOAD_MIN", "Cancelled", "EarlyUploads", "SourceGone",
           "Staged", "Throttle", "abandon_planned", "admit", "admit_many", "all_confirmed",
           "all_uploaded", "batches", "commit", "commit_many", "encode", "encode_early",
           "encode_many", "finish", "plan_rows", "protect_file", "remove_stages", "resume",
           "stage", "staged_sizes", "transfer_bytes", "upload", "upload_failed", "upload_one"]


def admit(v: Archive, source: Path, name: str | None = None) -> str:
    """Record a file to protect; returns its new id. Nothing is read yet."""
    row = _admission(v, source, name, source.stat())
    v.db.add_file(**row)
    event(logging.INFO, "file admitted", file_id=row["file_id"], size=row["size"])
    return row["file_id"]


def admit_many(v: Archive, sources: list[tuple[Path, str | None]]) -> list[str | OSError]:
    """`admit` for many files in one transaction (one fsync for the lot). Per source, in
    order: its new id, or the OSError its stat raised (that file alone is left out)."""
    rows: list[dict] = []
    out: list[str | OSError] = []
    now = time.time()
    for source, name in sources:
        try:
            st = source.stat()
        except OSError as exc:
            out.append(exc)
            continue
        # a microsecond apart: listings and queues ("oldest first") keep the order given
        rows.append(dict(_admission(v, source, name, st), created=now + len(rows) * 1e-6))
        out.append(rows[-1]["file_id"])
    v.db.add_files(rows)
    batch_event(logging.INFO, "file admitted", "files admitted",
                [{"file_id": row["file_id"], "size": row["size"]} for row in rows])
    return out


def _admission(v: Archive, source: Path, name: str | None, st: os.stat_result) -> dict:
    return dict(file_id=os.urandom(16).hex(), name=name or source.name, size=st.st_size,
                mtime=st.st_mtime, scheme=v.cfg.scheme, state=FileState.CLAIMED,
                source=str(source))



def encode(v: Archive, fid: str, progress: Progress | None = None,
           early: EarlyUploads | None = None) -> None:
    """Write the private container (fsynced) and the staged public objects; plan uploads.

    With `early`, a large file's objects start uploading to the healthy stores while it
    is encoded; those that land are recorded as uploaded in the same transaction that
    marks the file encoded."""
    f = v.db.file(fid)
    work = v.work_dir(fid)
    shutil.rmtree(work, ignore_errors=True)  # a crash mid-encode left a partial stage
    work.mkdir(parents=True)
    abandon_planned(v, fid)  # ... and perhaps early uploads under names now unused
    try:
        src = open(Path(f.source), "rb")
    except OSError as exc:
        raise SourceGone(f"cannot read the file to protect ({exc.strerror})") from exc
    big = f.size >= EARLY_UPLOAD_MIN
    run = EarlyUploadRun(v, fid, early) if early and early.stores and big else None
    try:
        with src:
            st = stage(v, src, work, v.container_path(fid), progress, run.start if run else None)
        sent = run.join() if run else set()
    except BaseException as exc:
        if run:
            run.abort(exc)
        shutil.rmtree(work, ignore_errors=True)  # e.g. a full disk: give the space back
        raise
    planned = run.planned if run else plan_rows(v.cfg, fid, st.layout)
    rows = [dict(row, state="uploaded" if row["name"] in sent else "pending")
            for row, _ in st.complete(planned)]
    with v.db.tx() as conn:
        _record_encoded(v, conn, fid, st, rows)
    for store in {row["store"] for row in rows if row["state"] == "uploaded"}:
        v.db.store_ok(store)
    _log_encoded(fid, st, len(sent))


def _record_encoded(v: Archive, conn, fid: str, st: Staged, rows: list[dict]) -> None:
    """Inside the caller's transaction: the file's object rows, and the file encoded
    (its container is the file just written: one an earlier encode kept is dropped)."""
    v.db.drop_containers([fid], conn)
    v.db.drop_objects(fid, conn, pending_only=True)
    v.db.drop_planned(fid, conn)
    v.db.add_objects(conn, rows)
    v.db.set_state(fid, FileState.ENCODED, conn, error=None, **st.file_fields(v.cfg, v.key))


def _record_encoded_many(v: Archive, conn, batch: list[tuple[str, Staged, list[dict]]]
                         ) -> None:
    """`_record_encoded` for a batch, a statement per step rather than four a file (the
    encoder threads share the GIL with everything else)."""
    fids = [fid for fid, _, _ in batch]
    v.db.drop_pending_objects_of(fids, conn)
    v.db.drop_planned_of(fids, conn)
    v.db.add_objects(conn, [row for _, _, rows in batch for row in rows])
    v.db.set_states_each([(fid, {"error": None, **st.file_fields(v.cfg, v.key)})
                          for fid, st, _ in batch], FileState.ENCODED, conn)


def _log_encoded(fid: str, st: Staged, sent_early: int = 0) -> None:
    event(logging.INFO, "file encoded", **_encoded_fields(fid, st, sent_early))


def _log_encoded_many(staged: list[tuple[str, Staged]]) -> None:
    batch_event(logging.INFO, "file encoded", "files encoded",
                [_encoded_fields(fid, st) for fid, st in staged])


def _encoded_fields(fid: str, st: Staged, sent_early: int = 0) -> dict[str, Any]:
    return {"file_id": fid, "size": st.size, "public_bytes": st.layout.puf_len,
            "private_bytes": st.layout.prf_len, "sent_early": sent_early}


def encode_many(v: Archive, fids: list[str],
                check: Callable[[int], None] | None = None) -> dict[str, BaseException | None]:
    """Encode small files as one batch (`encode` without early uploads, for each): each
    is staged without fsyncs, then one durability barrier covers them all (every staged
    file and container, then each folder once) and one transaction marks them all
    encoded. Returns each file's outcome, in the order given: None, or the error that
    stopped that file (SourceGone, OSError, an encode error), the others going on.

    `check` is called before each file; what it raises (Cancelled) stops the batch with
    nothing recorded, as does a failing barrier or transaction: every file is then still
    claimed and is encoded again, from scratch, by the next attempt. A crash anywhere
    leaves the same: nothing is recorded before the barrier has made it durable."""
    if not fids:
        return {}
    rows = v.db.files_by_id(fids)
    v.db.abandon_planned_of(fids)  # none for a small file; one read to be sure
    outcomes: dict[str, BaseException | None] = {}
    staged: list[tuple[str, Staged]] = []
    reserved: dict[str, int] = {}  # memory budget taken for a file's held fragments
    present = v.staged_dirs()  # what a crash mid-encode left
    try:
        for fid in fids:
            if check is not None:
                check(0)
            try:
                st = _stage_one(v, fid, rows.get(fid), reserved, fid in present)
                if not st.held and fid in reserved:
                    v.held.release(reserved.pop(fid))
                staged.append((fid, st))
                outcomes[fid] = None
            except Exception as exc:  # noqa: BLE001 - this file's own outcome
                if isinstance(exc, _NotClaimed):
                    outcomes[fid] = exc  # not ours to clean: the file is elsewhere
                    continue
                _unstage(v, fid)
                outcomes[fid] = exc
        files: list[Path] = []
        dirs: dict[str, None] = {}
        for _, st in staged:
            f, d = st.durable()
            files += f
            dirs.update(dict.fromkeys(d))
        if any(not st.held for _, st in staged):  # new folders in work/
            dirs[os.fspath(v.root / "work")] = None
        sync_batch(files, dirs)
        planned = [(fid, st, st.rows(v.cfg, fid)) for fid, st in staged]
        for fid, st, rows_of in planned:  # held before they are recorded: a sender that
            if st.held:                   # reads the rows finds the bytes
                v.held.hold(fid, st.held, {row["store"] for row, _ in rows_of
                                           if row["role"] == "public"}, reserved.pop(fid))
        with v.db.tx() as conn:
            v.db.put_containers(conn, [(fid, st.container) for fid, st in staged
                                       if st.container is not None])
            v.db.drop_containers([fid for fid, st in staged if st.container is None], conn)
            _record_encoded_many(v, conn, [(fid, st, [dict(row, state="pending")
                                                      for row, _ in rows_of])
                                           for fid, st, rows_of in planned])
    except BaseException:
        for fid, _ in staged:  # nothing of it was recorded: give the space back
            v.held.drop(fid)
            _unstage(v, fid)
        raise
    finally:
        for n in reserved.values():  # reserved for files that were not held after all
            v.held.release(n)
    _log_encoded_many(staged)
    return outcomes


class _NotClaimed(DispersiondError):
    """A file of a batch that is not waiting to be encoded (no row, or another state)."""


def _unstage(v: Archive, fid: str) -> None:
    """What an encode of a still-claimed file left (nothing refers to it yet)."""
    shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    v.container_path(fid).unlink(missing_ok=True)  # (a held one was never written)


def _stage_one(v: Archive, fid: str, f: FileRow | None, reserved: dict[str, int],
               left: bool) -> Staged:
    """One file of a batch, staged without fsyncs (the batch's barrier makes it durable).
    Its public fragments are held in memory instead when every one of them will be
    packed and the memory budget allows (`reserved` gets what it took). `left`: a crash
    mid-encode left a stage folder for it."""
    if f is None or f.state != FileState.CLAIMED:
        raise _NotClaimed(f"file {fid} is not waiting to be encoded "
                          f"({'no record' if f is None else f'it is {f.state}'})")
    work = v.work_dir(fid)
    need = held_need(v.cfg, f.size)
    hold = need is not None and v.held.reserve(need)
    if hold:
        reserved[fid] = need or 0
        if left:  # a crash mid-encode left a partial stage
            shutil.rmtree(work, ignore_errors=True)
    else:
        try:
            os.mkdir(work, 0o700)
        except FileExistsError:  # a crash mid-encode left a partial stage
            shutil.rmtree(work, ignore_errors=True)
            os.mkdir(work, 0o700)
    try:
        data = read_whole(f.source or "")  # small: read whole, in four system calls
    except OSError as exc:
        raise SourceGone(f"cannot read the file to protect ({exc.strerror})") from exc
    return stage(v, io.BytesIO(data), work, v.container_path(fid), sync=False, hold=hold,
                 size=len(data))


def held_need(cfg, size: int) -> int | None:
    """Memory a `size`-byte file's public fragments take when held (held.py), or None
    if one of them would not be packed (it needs a staged copy to upload from). The
    bound is of the uncompressed layout: compression only makes them smaller."""
    sizes = staged_sizes(cfg, se2.Layout(se2.DEFAULT_CHUNK_LOG2, size, 0))
    if max(sizes.values()) * 1.15 + 4096 >= cfg.pack.threshold:  # a margin for the
        return None                               # headers and padding a real encode adds
    return sum(n for name, n in sizes.items() if name != "prf")


class SourceGone(DispersiondError):
    """The file to protect vanished or cannot be read: it goes to quarantine."""


def upload(v: Archive, fid: str, throttle: Throttle | None = None,
           progress: Progress | None = None) -> list[tuple[str, Exception]]:
    """Upload every pending object of a file in parallel (small ones in packs); returns
    the failures."""
    return send_objects(v, v.db.objects(fid, states=("pending",)), throttle, progress)


def transfer_bytes(cfg, size: int) -> int:
    """Bytes a `put` of a `size`-byte file reads and sends (for its progress bar)."""
    rows = plan_rows(cfg, "", se2.Layout(se2.DEFAULT_CHUNK_LOG2, size, 0))
    return size + sum(row["object_size"] for row, _ in rows)


def _readiness(f: FileRow, counts: tuple[int, int, int, int] | None) -> tuple[bool, bool]:
    """(restorable from its confirmed uploads, every upload confirmed), from the counts
    of the file's objects (`upload_counts`)."""
    if counts is None:  # no objects at all
        return False, True
    public_up, private_up, _, _ = counts
    return public_up >= Layout.of_row(f).need and private_up > 0, all_confirmed(counts)


def all_confirmed(counts: tuple[int, int, int, int] | None) -> bool:
    """Is every object of a file confirmed, by its `upload_counts` (None: it has none)?"""
    return counts is None or counts[2] == counts[3]


def commit(v: Archive, fid: str) -> str:
    """Advance an encoded file as far as its confirmed uploads allow; returns the new state."""
    commit_many(v, [v.db.file(fid)])
    return v.db.file(fid).state


def commit_many(v: Archive, files: list[FileRow],
                counts: dict[str, tuple[int, int, int, int]] | None = None) -> list[str]:
    """Commit every encoded file among `files` that its confirmed uploads make
    restorable, all in one transaction (one fsync, however many files: a stream of small
    files settles many at a time). Returns the ids committed. `counts`: the files'
    `upload_counts`, if the caller has them already."""
    ready: list[tuple[str, bool]] = []
    encoded = [f for f in files if f.state == FileState.ENCODED]
    if counts is None:
        counts = v.db.upload_counts([f.file_id for f in encoded]) if encoded else {}
    for f in encoded:
        restorable, complete = _readiness(f, counts.get(f.file_id))
        if restorable:
            ready.append((f.file_id, complete))
    if not ready:
        return []
    with v.db.tx() as conn:
        v.db.set_states([fid for fid, _ in ready], FileState.COMMITTED, conn, error=None)
        v.db.mark_manifest_dirty(conn)
    remove_stages(v, [fid for fid, complete in ready if complete])
    batch_event(logging.INFO, "file committed", "files committed",
                [{"file_id": fid, "complete": complete} for fid, complete in ready])
    return [fid for fid, _ in ready]


#: Stage folders removed at once: each removal waits on the filesystem's journal (and, on
#: a disk mounted with discard, its trim), and several in flight share those waits.
REMOVERS = 4


def remove_stages(v: Archive, fids: list[str]) -> None:
    """The staged copies of files that no longer need them, several folders at a time
    (one at a time, a batch of small files spent most of its commit here)."""
    present = v.staged_dirs()
    fids = [fid for fid in fids if fid in present]  # held: none made
    if len(fids) < 2:
        for fid in fids:
            shutil.rmtree(v.work_dir(fid), ignore_errors=True)
        return
    with ThreadPoolExecutor(REMOVERS, thread_name_prefix="remove-stage") as pool:
        list(pool.map(lambda fid: shutil.rmtree(v.work_dir(fid), ignore_errors=True), fids))


def all_uploaded(v: Archive, fid: str) -> bool:
    return not v.db.objects(fid, not_state="uploaded")


def protect_file(v: Archive, path: Path, name: str | None = None,
                 progress: Progress | None = None,
                 on_step: Callable[[str], None] | None = None) -> str:
    """`put`: all steps for one file now. Raises if an upload failed (state kept for resume)."""
    fid = admit(v, path, name)
    resume(v, fid, progress, on_step)
    return fid


def resume(v: Archive, fid: str, progress: Progress | None = None,
           on_step: Callable[[str], None] | None = None) -> str:
    """Run the remaining steps of one file; returns its state."""
    f = v.db.file(fid)
    throttle = Throttle(v.cfg.schedule.bandwidth())
    if f.state == FileState.CLAIMED:
        if on_step:
            on_step("encode")
        encode_early(v, fid, throttle, progress)
    if on_step:
        on_step("upload")
    failures = upload(v, fid, throttle, progress)
    state = commit(v, fid)
    if failures:
        upload_failed(v, fid, f.attempts, state, failures)
    if all_uploaded(v, fid) and state == FileState.COMMITTED:
        shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    return state


def encode_early(v: Archive, fid: str, throttle: Throttle,
                 progress: Progress | None = None) -> None:
    """`encode` with early (for a large file: direct) uploads to every store; a store
    that fails under a direct upload gets a staged copy instead, kept for resume."""
    stores = frozenset(s.name for s in v.cfg.stores)
    try:
        encode(v, fid, progress, EarlyUploads(stores, throttle, progress))
    except DirectUploadFailed as exc:  # again, staged: what fails now is kept for resume
        log.warning("file %s: %s; encoding it again with a staged copy for that store",
                    fid, exc)
        encode(v, fid, progress, EarlyUploads(stores - {exc.store}, throttle, progress))


def upload_failed(v: Archive, fid: str, attempts: int, state: str,
                  failures: list[tuple[str, Exception]]) -> None:
    """Record that some of a file's uploads failed (`attempts` before this one); raises
    if the file is not restorable yet (it stays encoded, for a resume)."""
    stores = sorted({s for s, _ in failures})
    first = failures[0][1]
    v.db.update_file(fid, error=f"upload to {', '.join(stores)} failed: {first}",
                     attempts=attempts + 1)
    if state != FileState.COMMITTED:
        raise DispersiondError(
            f"file {fid}: upload to store(s) {', '.join(stores)} failed ({first}). The file "
            "is encoded and kept in the state directory; it is retried by 'dispersiond run' "
            "or 'dispersiond put --resume'")
    log.warning("file %s is restorable but store(s) %s still lack copies; 'dispersiond "
                "repair' or the daemon will finish them", fid, ", ".join(stores))
