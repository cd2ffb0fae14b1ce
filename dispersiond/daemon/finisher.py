"""After the uploads: commit, the manifest backup's timing, and the after-policy.

All of it runs on the main thread, which is what keeps commits, backups and the
after-policy from racing one another.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable

from backends.backoff import Backoff

from .. import inbox as ib
from ..errors import DispersiondError
from ..logs import event, log
from ..ops.backup import backup_manifest
from ..ops.finalize import AfterPolicyFailed, finish
from ..ops.protect import all_confirmed, commit_many
from ..state import FileState
from ..archive import Archive
from .uploader import Uploader

#: At most one manifest backup a second, however fast files commit.
BACKUP_SPACING = 1.0
#: The longest wait before an after-policy that failed is tried again.
AFTER_RETRY = 60.0
#: Files committed or finished per transaction: a burst's rows are read a slice at a
#: time (10,000 at once held ~11 MB of rows, the daemon's peak).
FINISH_BATCH = 512
#: Files committed since the last backup that make the next one due even while the
#: daemon is busy: a long burst is then backed up (and its files done, their originals
#: gone) as it goes, not all at its end, when a 30,000-file burst's checkpoint held lists
#: of all of them at once.
BURST_BACKUP_FILES = 5000
#: How often the loop looks for share copies whose links have expired.
COPIES_EVERY = 60.0


class Finisher:
    """Files from 'uploads came back' to 'done', and the manifest backups between."""

    def __init__(self, v: Archive, uploader: Uploader, stop: threading.Event,
                 idle: Callable[[], bool], *, retry_base: float, retry_max: float) -> None:
        self.v, self.cfg, self.uploader, self.stop, self.idle = v, v.cfg, uploader, stop, idle
        self.retry_max = retry_max
        self.settled: set[str] = set()  # last upload in flight came back: advance after the batch
        self.backups = Backoff(retry_base, retry_max, jitter="none")
        self.backup_due = 0.0  # monotonic: earliest next manifest backup
        self.last_backup: float | None = None  # wall clock
        self.last_backup_mono = time.monotonic()
        self.manifest_dirty = True  # until the database says otherwise
        self.committed_since_backup = 0
        self.swept = False
        self.sweep_tried = False
        self.finish_due = True
        self.finish_not_before = 0.0
        self.copies_due = 0.0  # monotonic: next look for expired share copies

    # --- commit

    def settle(self, fid: str) -> None:
        """Look at a file once its last upload in flight has come back, not at each one:
        noted here, advanced with the rest of the batch (`advance_settled`)."""
        if not self.uploader.sending(fid):
            self.settled.add(fid)

    def advance_settled(self) -> None:
        fids, self.settled = self.settled, set()
        if fids:
            self.advance(fids)

    def advance(self, fids: Iterable[str]) -> None:
        """Commit the files that became restorable (one transaction for all); drop the
        staged copies of committed ones whose every object is now confirmed. A slice of
        FINISH_BATCH files at a time: a private pack can settle thousands at once."""
        fids = list(fids)
        for start in range(0, len(fids), FINISH_BATCH):
            part = fids[start:start + FINISH_BATCH]
            # Counted first: a file none of whose private containers has landed can be
            # neither committed nor finished, and is not read (a public pack settles
            # hundreds of those, each read for nothing).
            counts = self.v.db.upload_counts(part)
            part = [fid for fid in part if (c := counts.get(fid)) is None or c[1] > 0]
            if not part:
                continue
            rows = list(self.v.db.files_by_id(part).values())
            newly = commit_many(self.v, [f for f in rows if f.state == FileState.ENCODED],
                                counts)
            if newly:
                self.manifest_dirty = True
                self.committed_since_backup += len(newly)
            present: set[str] | None = None  # listed once, if any file needs it
            for f in rows:
                if f.state == FileState.COMMITTED and all_confirmed(counts.get(f.file_id)):
                    present = self.v.staged_dirs() if present is None else present
                    if f.file_id in present:
                        shutil.rmtree(self.v.work_dir(f.file_id), ignore_errors=True)
                    self.finish_due = True

    def advance_all(self) -> None:
        """At start-up: files a crash left between steps (uploads done, commit not)."""
        self.advance(f.file_id for f in self.v.db.files_in(FileState.ENCODED,
                                                           FileState.COMMITTED))

    # --- manifest backups

    def backup_now(self) -> None:
        """The schedule says: back up now if anything changed."""
        self.manifest_dirty = True  # look at the database's flag, not only ours
        self.backup_due = 0.0
        self.last_backup_mono = -1e9

    def sweep_once(self) -> None:
        if not self.swept and not self.sweep_tried:
            self.sweep_tried = True  # once per start; before a backup it is tried again
            self.sweep_orphans()

    def expire_share_copies(self) -> None:
        """Delete the standalone copies behind share links that have expired (at most once
        a minute; one query of a small table when there are none)."""
        now = time.monotonic()
        if now < self.copies_due:
            return
        self.copies_due = now + COPIES_EVERY
        if self.v.db.trash_expired_copies(time.time()):
            self.v.empty_trash()

    def backup_due_in(self, now: float | None = None) -> float | None:
        """Seconds until a backup the spacing holds back may go (for the loop's wake-up):
        without it the loop slept its full second first. None when none waits for the
        spacing (one that waits for the daemon to go idle is woken by that event)."""
        now = time.monotonic() if now is None else now
        if not self.manifest_dirty or now >= self.backup_due:
            return None
        return self.backup_due - now

    def maybe_backup(self) -> None:
        self.expire_share_copies()
        now = time.monotonic()
        if now < self.backup_due or not self.manifest_dirty:
            return
        if not self.v.db.manifest_dirty():
            self.manifest_dirty = False
            return
        interval = self.cfg.schedule.seconds("manifest_backup") or 900
        if not (self.idle() or now - self.last_backup_mono >= interval
                or self.committed_since_backup >= BURST_BACKUP_FILES):
            return
        health = self.uploader.health
        if not any(health[s].can_send(now, 0) for s in self.cfg.private.stores):
            return  # every private store is backing off: the backup would only wait and fail
        if not self.swept:
            self.sweep_orphans()
        ok = backup_manifest(self.v)
        self.last_backup_mono = time.monotonic()
        if ok:
            self.committed_since_backup = 0
            from ..ops.rekey import finish_retirements

            finish_retirements(self.v)  # revocations whose backup had not landed yet
            self.manifest_dirty = False
            self.backups.ok()
            self.backup_due = self.last_backup_mono + BACKUP_SPACING
            self.last_backup = time.time()
            self.finish_due = True
            return
        self.backup_due = self.backups.fail(self.last_backup_mono)
        event(logging.WARNING, "manifest backup failed on every private store; retrying",
              retry_in=round(self.backup_due - self.last_backup_mono, 1))

    def sweep_orphans(self) -> None:
        """Delete manifest backups a crash left unrecorded (sealed with our key, not newer
        than the next sequence number), so only the recorded, pruned set stays."""
        from .. import manifest
        from ..ops.backup import _backups

        seq = self.v.db.manifest_seq()
        found = 0
        for store in self.cfg.private.stores:
            recorded = {name for _, name in _backups(self.v, store)}
            try:
                s = self.v.store(store)
                for name in list(s.list(manifest.PREFIX)):
                    if name in recorded:
                        continue
                    try:
                        doc = manifest.open_sealed(self.v.key, s.get_bytes(name))
                    except DispersiondError:
                        continue  # not ours
                    if doc.get("seq", 1 << 62) <= seq + 1:
                        self.v.discard(store, name)
                        found += 1
            except Exception as exc:  # noqa: BLE001 - a store down: try again next time
                log.warning("could not look for stale manifest backups on store %s: %s",
                            store, exc)
                return
        self.v.empty_trash()  # also what a crash left there
        if found:
            event(logging.INFO, "stale manifest backups removed", count=found)
        self.swept = True

    # --- after-policy

    def finish(self) -> None:
        """After-policy and 'done' for files fully uploaded and in a landed manifest backup:
        the same `finish` as `put`'s, with the daemon's after-policy and its own backups."""
        now = time.monotonic()
        if not self.finish_due or now < self.finish_not_before:
            return
        self.finish_due = False
        fids = self.v.db.finishable_ids()
        for start in range(0, len(fids), FINISH_BATCH):
            if self.stop.is_set():
                self.finish_due = True
                return
            try:
                handled = finish(self.v, fids[start:start + FINISH_BATCH],
                                 after=lambda files: ib.apply_after_many(self.v, files),
                                 stopping=self.stop.is_set, backup=False)
            except AfterPolicyFailed as exc:
                log.error("file %s: the after-policy (%s) failed: %s; retrying in %.0f s",
                          exc.file_id, self.cfg.after, exc.cause.strerror or exc.cause,
                          self.retry_max)
                self.finish_not_before = now + min(self.retry_max, AFTER_RETRY)
                self.finish_due = True
                handled = exc.handled
            for fid, res in handled.items():
                if res.get("done"):
                    event(logging.INFO, "file done", file_id=fid, original=res.get("original"))
        if self.stop.is_set():
            self.finish_due = True
