"""The inbox side of the daemon: which files to take, when, and how, crash-safely.

Claiming. A file is taken only once its size, mtime and inode stayed the same for
`stable_seconds` of observation (a copy that keeps an old mtime is still watched).
Hidden names and partial-download names are never taken, so writers should write to
`name.part` (or `.name`) and rename when done. Only regular files directly in the
inbox are taken; subfolders and symlinks are left alone.

The claim itself is ordered so that a SIGKILL at any instant loses nothing and
claims nothing twice:

  1. a row is inserted (state 'claiming', original name, inbox path);
  2. the file is renamed to `state_dir/claimed/<file_id>` (and that folder fsynced);
  3. the row becomes 'claimed' with `source` = the claimed path.

Files ready at the same time go through these steps as one batch (two transactions and
one fsync for the lot), which is what keeps a burst of small files cheap.

`reconcile` finishes or undoes step 2 for every 'claiming' row at start-up. When the
inbox and the state directory are on different filesystems, a rename is impossible:
step 2 copies to `claimed/.<file_id>.part`, fsyncs, renames it to `claimed/<file_id>`
and only then unlinks the inbox file (a crash in between leaves both; reconcile
drops the inbox copy if it is still the same file).

After-policy, run only once every object is confirmed and a manifest backup holding
the file has landed: `delete` unlinks the claimed original; `move` puts it, under its
own name, into `after_move_to`; `keep` puts it, under its own name, into
`state_dir/kept/`. Either way it has left the inbox, so it is never protected twice.
A name already taken there by different bytes gets `.<file_id prefix>` before its
suffix. Each of these is idempotent: re-running after a crash finds the job done. The
daemon applies it to a batch of files at once (`apply_after_many`: one fsync per
folder, one transaction recording where the originals went).

Names are whatever bytes the file system holds: kept exactly (as `os.fsdecode` gives
them; the state package stores undecodable bytes beside the text), shown only through
`display.shown`, and a file whose claim the database refuses is the only one left behind.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import digests
from .display import shown
from .fsutil import PRIVATE_FILE, fsync_dir, private_dir, restrict
from .logs import batch_event, event
from .state import FileRow, FileState
from .archive import Archive

PARTIAL_SUFFIXES = (".part", ".tmp", "~", ".partial", ".crdownload", ".swp")


def eligible_name(name: str) -> bool:
    """Hidden files and names of files still being written are never taken."""
    return bool(name) and not name.startswith(".") and not name.endswith(PARTIAL_SUFFIXES)


# --------------------------------------------------------------- stability

@dataclass(slots=True)  # one per file waiting in the inbox: 10,000 in a burst
class _Seen:
    key: tuple[int, int, int]  # size, mtime_ns, inode
    since: float


class Stability:
    """Tracks candidate files until they stop changing for `stable_seconds`.

    Paths are kept as text: a burst's 10,000 waiting files as Path objects cost ~4 MB
    more, and a Path per watcher event was a few per cent of a burst's CPU. `ready`
    hands out Paths, for the few it returns."""

    def __init__(self, stable_seconds: float) -> None:
        self.stable_seconds = stable_seconds
        self.seen: dict[str, _Seen] = {}
        # Files that could not be claimed (e.g. no permission): skipped until they change.
        self.refused: dict[str, tuple[int, int, int]] = {}

    def note(self, path: str | Path) -> None:
        path = os.fspath(path)
        if path not in self.seen and eligible_name(os.path.basename(path)):
            self.seen[path] = _Seen((-1, -1, -1), time.monotonic())

    def __len__(self) -> int:
        return len(self.seen)

    def next_due(self) -> float | None:
        """Seconds until the earliest candidate may be stable (None: no candidates)."""
        if not self.seen:
            return None
        now = time.monotonic()
        return max(0.0, min(s.since + self.stable_seconds - now for s in self.seen.values()))

    def ready(self, limit: int | None = None) -> list[tuple[Path, os.stat_result]]:
        """Candidates unchanged for long enough, oldest first; forgets vanished ones.

        With `limit`, at most that many, of those noted first: the others get their
        first look (so their stable time runs meanwhile) but no stat is kept for them, so
        a burst of 10,000 files is not held as 10,000 stats at once."""
        now = time.monotonic()
        out = []
        for path, seen in list(self.seen.items()):
            if limit is not None and len(out) >= limit and seen.key[0] >= 0:
                continue  # looked at before: its time runs on without a new look
            try:
                st = os.lstat(path)
            except OSError:
                del self.seen[path]
                continue
            if not stat.S_ISREG(st.st_mode):
                del self.seen[path]
                continue
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            if self.refused.get(path) == key:
                del self.seen[path]
                continue
            if key != seen.key:
                seen.key, seen.since = key, now
                if self.stable_seconds > 0:
                    continue
            if now - seen.since >= self.stable_seconds and (limit is None or len(out) < limit):
                out.append((seen.since, path, st))
        out.sort(key=lambda t: t[0])
        return [(Path(p), st) for _, p, st in out]

    def taken(self, path: str | Path) -> None:
        self.seen.pop(os.fspath(path), None)

    def refuse(self, path: str | Path, st: os.stat_result) -> None:
        path = os.fspath(path)
        self.seen.pop(path, None)
        self.refused[path] = (st.st_size, st.st_mtime_ns, st.st_ino)


def scan(inbox: Path) -> list[str]:
    """Every eligible regular file directly in the inbox (the rescan behind the events)."""
    out = []
    try:
        with os.scandir(inbox) as it:
            for entry in it:
                if eligible_name(entry.name) and entry.is_file(follow_symlinks=False):
                    out.append(entry.path)
    except FileNotFoundError:
        pass
    return out


# --------------------------------------------------------------- moving files

def _copy_durably(src: Path, tmp: Path) -> None:
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())
    shutil.copystat(src, tmp)


def move_into(src: Path, dest: Path, sync: bool = True) -> None:
    """Rename `src` to `dest` (replacing nothing that matters: dest is ours and fresh);
    across filesystems: copy to a hidden temp, fsync, rename, then unlink `src`.
    sync=False leaves the fsync of dest's folder after a rename to the caller (batches)."""
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.part")
        _copy_durably(src, tmp)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
        os.unlink(src)
        fsync_dir(src.parent)
        return
    if sync:
        fsync_dir(dest.parent)


def _same_bytes(path: Path, f: FileRow) -> bool:
    try:
        if path.stat().st_size != f.size or f.digest is None:
            return False
        return digests.of_path(f.digest_alg, path) == f.digest
    except OSError:
        return False


def link_into(src: Path, folder: Path, f: FileRow) -> Path:
    """A second name (or, across filesystems, a durable copy) for a claimed original in
    `folder`, under its own name, never over different bytes; the original stays. An
    earlier attempt's is recognised and returned. Durable once `folder` is fsynced."""
    folder.mkdir(parents=True, exist_ok=True)  # the mode of a folder the user named is theirs
    name = Path(f.name).name or f.file_id
    first = folder / name
    stem, suffix = os.path.splitext(name)
    second = folder / f"{stem}.{f.file_id[:12]}{suffix}"
    for dest in (first, second):
        if dest.exists():
            if dest == second or _same_bytes(dest, f):
                return dest  # an earlier attempt that died before the original went
            continue
        _link_no_clobber(src, dest)
        return dest
    raise FileExistsError(second)  # not reached


def _link_no_clobber(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # fails if dest appeared meanwhile: nothing is ever overwritten
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        tmp = dest.with_name(f".{dest.name}.part")
        _copy_durably(src, tmp)
        if dest.exists():
            tmp.unlink()
            raise FileExistsError(dest) from None
        os.rename(tmp, dest)


# --------------------------------------------------------------- claim and reconcile

def claimed_dir(v: Archive) -> Path:
    return v.root / "claimed"


def claim(v: Archive, items: list[tuple[Path, os.stat_result]],
          ) -> tuple[list[tuple[str, int]], list[tuple[Path, os.stat_result, OSError]]]:
    """Take stable inbox files, in one batch: one transaction to record them, the renames,
    one fsync of claimed/, one transaction to mark them claimed.

    Returns ([(file_id, size)] claimed, [(path, stat, error)] that could not be moved).
    Files that vanished meanwhile are in neither list.
    """
    ids = os.urandom(16 * len(items))  # one call for the batch
    rows = [(ids[16 * i:16 * i + 16].hex(), path, st) for i, (path, st) in enumerate(items)]
    now = time.time()
    rows, failed = _record_claims(v, rows, now)
    cdir = claimed_dir(v)
    moved: list[tuple[str, Path, os.stat_result]] = []
    try:
        for fid, path, st in rows:
            try:
                move_into(path, cdir / fid, sync=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed.append((path, st, exc))
                continue
            moved.append((fid, path, st))
    finally:
        # Whatever happens, no row stays 'claiming' while this process runs.
        fsync_dir(cdir)
        done = {fid for fid, _, _ in moved}
        v.db.claimed_many([(fid, str(cdir / fid)) for fid, _, _ in moved],
                          [fid for fid, _, _ in rows if fid not in done], now)
    batch_event(logging.INFO, "file claimed", "files claimed",
                [{"file_id": fid, "size": st.st_size} for fid, _, st in moved])
    return [(fid, st.st_size) for fid, _, st in moved], failed


#: What the database raises for a value it cannot take (a file's own fault, unlike a full
#: disk or a lock, which stop the whole batch as before).
_BAD_VALUE = (ValueError, sqlite3.InterfaceError, sqlite3.DataError)


def _record_claims(v: Archive, rows: list[tuple[str, Path, os.stat_result]], now: float,
                   ) -> tuple[list[tuple[str, Path, os.stat_result]],
                              list[tuple[Path, os.stat_result, OSError]]]:
    """Step 1 for the whole batch in one transaction; should the batch be refused, file by
    file, so that one file the database cannot take is left in the inbox, alone."""
    def claim_row(fid: str, p: Path, st: os.stat_result) -> tuple:
        return fid, p.name, st.st_size, st.st_mtime, v.cfg.scheme, str(p)

    try:
        v.db.add_claims([claim_row(*r) for r in rows], now)
        return rows, []
    except _BAD_VALUE as exc:
        if len(rows) == 1:
            return [], [(rows[0][1], rows[0][2], _unrecordable(exc))]
    kept, failed = [], []
    for r in rows:
        try:
            v.db.add_claims([claim_row(*r)], now)
            kept.append(r)
        except _BAD_VALUE as exc:
            failed.append((r[1], r[2], _unrecordable(exc)))
    return kept, failed


def _unrecordable(exc: Exception) -> OSError:
    return OSError(errno.EIO, f"the state database refused its record ({type(exc).__name__}: "
                              f"{exc}); rename the file (its name is the likely cause)")


def _drop_row(v: Archive, fid: str) -> None:
    v.db.drop_claiming([fid])


def reconcile(v: Archive, quarantine: Path) -> dict[str, int]:
    """At start-up: finish or undo interrupted claims and quarantines, adopt nothing blindly."""
    counts = {"claims_finished": 0, "claims_retried": 0, "claims_dropped": 0, "orphans": 0,
              "quarantines_finished": 0}
    cdir = claimed_dir(v)
    for tmp in cdir.glob(".*.part"):
        tmp.unlink(missing_ok=True)
    for tmp in (v.root / "prf").glob(".*.part"):  # an encode killed mid-write
        tmp.unlink(missing_ok=True)
    for f in v.db.files_in(FileState.CLAIMING):
        dest, orig = cdir / f.file_id, Path(f.source or "")
        if dest.exists():
            try:
                st = orig.stat()
                if (st.st_size, st.st_mtime) == (f.size, f.mtime) and not orig.samefile(dest):
                    orig.unlink()  # a cross-filesystem copy finished; its source is ours
            except OSError:
                pass
            v.db.set_state(f.file_id, FileState.CLAIMED, source=str(dest))
            counts["claims_finished"] += 1
            continue
        try:
            st = orig.stat()
        except OSError:
            _drop_row(v, f.file_id)
            counts["claims_dropped"] += 1
            continue
        if (st.st_size, st.st_mtime) != (f.size, f.mtime):
            _drop_row(v, f.file_id)  # changed since: the watcher takes it anew when stable
            counts["claims_dropped"] += 1
            continue
        try:
            move_into(orig, dest)
        except OSError:
            _drop_row(v, f.file_id)
            counts["claims_dropped"] += 1
            continue
        v.db.set_state(f.file_id, FileState.CLAIMED, source=str(dest))
        counts["claims_retried"] += 1
    # Quarantines interrupted between marking the row and moving the file.
    for f in v.db.files_in(FileState.FAILED):
        if f.source and Path(f.source).parent == cdir and Path(f.source).exists():
            finish_quarantine(v, f, quarantine)
            counts["quarantines_finished"] += 1
    known = v.db.file_states()
    for entry in cdir.iterdir():
        if entry.name.startswith("."):
            continue
        if known.get(entry.name) == FileState.DONE:  # an after-policy a power cut undid
            f = v.db.file(entry.name)
            apply_after(v, FileRow(**{**f.__dict__, "source": str(entry)}))
            counts["after_policy_redone"] = counts.get("after_policy_redone", 0) + 1
            continue
        if entry.name in known:
            continue
        # A claimed original without a row (its record was removed, e.g. by forget):
        # never protect it behind the user's back, never delete it.
        dest = private_dir(quarantine / f"orphan-{entry.name}")
        move_into(entry, dest / entry.name)
        (dest / "REASON").write_text("a claimed file without a record in the state database\n")
        restrict(dest / "REASON", PRIVATE_FILE)
        event(logging.WARNING, "claimed file without a record quarantined", file_id=entry.name)
        counts["orphans"] += 1
    return counts


# --------------------------------------------------------------- quarantine and after-policy

def quarantine_file(v: Archive, fid: str, reason: str, quarantine: Path) -> None:
    """Set a file aside for a person to look at; never retried, never deleted."""
    v.db.set_state(fid, FileState.FAILED, error=reason)
    f = v.db.file(fid)
    finish_quarantine(v, f, quarantine)
    v.audit("quarantine", fid, reason=reason)
    event(logging.WARNING, "file quarantined", file_id=fid, reason=reason)


def finish_quarantine(v: Archive, f: FileRow, quarantine: Path) -> None:
    private_dir(quarantine)
    folder = private_dir(quarantine / f.file_id)
    (folder / "REASON").write_text(f"{f.error or 'unknown'}\noriginal name: {shown(f.name)}\n",
                                   encoding="utf-8", errors="backslashreplace")
    restrict(folder / "REASON", PRIVATE_FILE)
    src = Path(f.source) if f.source else None
    dest = folder / (Path(f.name).name or f.file_id)
    if src is not None and src.parent == claimed_dir(v) and src.exists():
        move_into(src, dest)
    if src is None or src.parent == claimed_dir(v):
        v.db.update_file(f.file_id, source=str(dest) if dest.exists() else None)
    shutil.rmtree(v.work_dir(f.file_id), ignore_errors=True)


def apply_after(v: Archive, f: FileRow) -> str:
    """Delete, move or keep the claimed original; files added by `put` are never touched.
    Raises the OSError that stopped it."""
    done, failed = apply_after_many(v, [f])
    if failed:
        raise failed[0][1]
    return done[f.file_id]


def apply_after_many(v: Archive, files: list[FileRow]
                     ) -> tuple[dict[str, str], list[tuple[FileRow, OSError]]]:
    """`apply_after` for a batch: ({file_id: what became of its original}, [(file, the
    OSError that stopped it)]); one file's failure does not stop the others.

    Moving (`move`, `keep`) is ordered so that a crash anywhere loses no original and
    leaves no row pointing at nothing: every new name is made and made durable (one
    fsync of the folder), the new places are recorded (one transaction), and only then
    are the originals removed from claimed/ (one fsync). A crash after the record and
    before the removal leaves an original behind in claimed/: the next look removes it
    once its new place is there (or puts it there again if it is not)."""
    cdir = claimed_dir(v)
    done: dict[str, str] = {}
    failed: list[tuple[FileRow, OSError]] = []
    todo: list[tuple[FileRow, Path]] = []
    delete = v.cfg.after == "delete"
    for f in files:
        src = Path(f.source) if f.source else None
        if delete and src is not None and src.parent == cdir:
            try:  # unlinked without a look first: a stat a record saved
                src.unlink()  # no fsync: should a power cut undo it, reconcile deletes it again
                done[f.file_id] = "deleted"
            except FileNotFoundError:
                done[f.file_id] = "untouched"
            except OSError as exc:
                failed.append((f, exc))
            continue
        if src is not None and src.parent == cdir and src.exists():
            todo.append((f, src))
            continue
        left = cdir / f.file_id  # moved and recorded; the original not yet removed
        if not delete and src is not None and src != left and left.exists():
            if not src.exists():
                todo.append((f, left))  # its new place is gone: move it there again
                continue
            try:
                left.unlink()
            except OSError as exc:
                failed.append((f, exc))
                continue
        done[f.file_id] = "untouched"
    if not todo:  # always so under delete: the first branch took every original
        return done, failed
    folder = (v.cfg.path(v.cfg.after_move_to or "") if v.cfg.after == "move"
              else private_dir(v.root / "kept"))
    linked: list[tuple[FileRow, Path, Path]] = []
    for f, src in todo:
        try:
            linked.append((f, src, link_into(src, folder, f)))
        except OSError as exc:
            failed.append((f, exc))
    if not linked:
        return done, failed
    try:
        for d in dict.fromkeys(dest.parent for _, _, dest in linked):
            fsync_dir(d)
        v.db.set_sources([(f.file_id, str(dest)) for f, _, dest in linked])
    except OSError as exc:  # nothing removed: the next attempt finds its links again
        return done, failed + [(f, exc) for f, _, _ in linked]
    for f, src, _ in linked:
        try:
            src.unlink(missing_ok=True)
        except OSError as exc:  # recorded: the next look removes it
            failed.append((f, exc))
            continue
        done[f.file_id] = "moved" if v.cfg.after == "move" else "kept"
    fsync_dir(cdir)
    return done, failed
