"""`dispersiond run`: the service that protects whatever lands in the inbox.

One main thread owns the pipeline and is the only one that claims, commits, backs up
the manifest and applies the after-policy, so those steps never race. Encodes run on a
small pool (CPU, local disk) and uploads on `upload_workers` threads; both report back
through one queue. Every step is a transaction in the state database, so the daemon
can be SIGKILLed at any instant and resumes where each file was:

  inbox --claim--> claimed --encode--> encoded --uploads--> (restorable) committed
        --all objects confirmed + manifest backup with the file--> after-policy --> done

Stores fail independently: each has its own exponential backoff with jitter; while a
store is backing off nothing is sent to it except, when the wait is over, a single
probe upload. Files whose objects go elsewhere keep moving, and with erasure coding a
file commits once k shards and a private backup are up (the rest follow later; the
original is kept until they have).

Stopping (SIGTERM/SIGINT): no new work is started; transfers and encodes in flight get
a few seconds to finish, then are cancelled at their next read (they resume from the
last recorded step at the next start), and the process exits 0 well within
systemd's stop timeout.
"""
from __future__ import annotations

import collections
import datetime as dt
import errno
import json
import logging
import os
import queue
import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from backends import SourceError, StoreError, Unavailable

from . import inbox as ib
from .config import Config
from .errors import ConfigError, DispersiondError
from .logs import event, log
from .maintenance import backup_manifest
from .ops.encode import EAGER_MIN, Eager, abandon_planned
from .ops.finalize import finalize_many
from .ops.protect import SourceGone, all_uploaded, commit_many, encode
from .ops.upload import Cancelled, Throttle, upload_one
from .ops.verify import verify
from .sdnotify import Notifier
from .state import PROTECTED, FileState, ObjectRow
from .tap import DirectUploadFailed
from .units import human_size, parse_size
from .vault import Busy, Vault

#: How long in-flight work may run on after SIGTERM before it is cancelled.
STOP_GRACE = 4.0
#: How long cancelled work gets to unwind before the process exits regardless.
STOP_CANCEL = 3.0
#: Encodes at once: CPU and local disk bound.
ENCODERS = max(1, min(2, os.cpu_count() or 1))
#: Encode attempts before a file that keeps failing (not for lack of space) is quarantined.
ENCODE_ATTEMPTS = 3


@dataclass
class StoreHealth:
    """Backoff state of one store: exponential, with jitter, capped; probes when over."""

    base: float
    cap: float
    failures: int = 0
    until: float = 0.0  # monotonic
    last_fail: float = 0.0
    error: str = ""

    def can_send(self, now: float, in_flight: int) -> bool:
        if self.failures == 0:
            return True
        return now >= self.until and in_flight == 0  # one probe at a time

    def fail(self, started: float, error: str) -> float | None:
        """Record a failure; returns the new wait, or None if it did not escalate (the
        request was already under way when an earlier failure was recorded)."""
        now = time.monotonic()
        self.error = error
        if self.failures and started < self.last_fail:
            return None
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** (self.failures - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)  # "equal jitter"
        self.until, self.last_fail = now + delay, now
        return delay

    def ok(self) -> bool:
        """Record a success; True if the store had been failing."""
        was = self.failures > 0
        self.failures, self.until, self.error = 0, 0.0, ""
        return was

    def retry_at(self) -> float | None:
        if not self.failures:
            return None
        return time.time() + max(0.0, self.until - time.monotonic())


@dataclass
class Paths:
    inbox: Path
    quarantine: Path


def in_window(window: tuple[dt.time, dt.time] | None, now: dt.datetime) -> bool:
    """Is `now` (local time) inside the upload window? Windows may cross midnight."""
    if window is None:
        return True
    start, end = window
    t = now.time()
    if start == end:
        return True
    if start < end:
        return start <= t < end
    return t >= start or t < end


def window_opens(window: tuple[dt.time, dt.time] | None, now: dt.datetime) -> dt.datetime | None:
    """When the upload window next opens (None if it is open now or there is none)."""
    if window is None or in_window(window, now):
        return None
    opens = now.replace(hour=window[0].hour, minute=window[0].minute, second=0, microsecond=0)
    if opens <= now:
        opens += dt.timedelta(days=1)
    return opens


def _writable_dir(path: Path, what: str, setting: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot create the {what} {path} ({exc.strerror}); create "
                          "it and give the daemon's user write access") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}: the daemon's user cannot write to the {what} {path} "
                          "(check its owner and mode, and ReadWritePaths= in the unit)")
    return path.resolve()


def check_paths(cfg: Config) -> Paths:
    """What `run` needs beyond a valid config; every problem is an actionable ConfigError."""
    if not cfg.inbox:
        raise ConfigError("'inbox' is not set: the daemon protects files dropped into that "
                          "folder (add e.g. 'inbox: /var/spool/dispersiond/inbox')")
    state = _writable_dir(cfg.state_path, "state directory", "state_dir")
    inbox = _writable_dir(cfg.path(cfg.inbox), "inbox", "inbox")
    if inbox == state or state in inbox.parents:
        raise ConfigError("inbox: must not be inside state_dir (the state directory holds "
                          "claimed originals and keys to them)")
    quarantine = _writable_dir(cfg.path(cfg.quarantine_dir) if cfg.quarantine_dir
                               else state / "quarantine", "quarantine folder", "quarantine_dir")
    if quarantine == inbox:
        raise ConfigError("quarantine_dir: must not be the inbox (files would be taken again)")
    if cfg.after == "move":
        moved = _writable_dir(cfg.path(cfg.after_move_to or ""), "folder for protected "
                              "originals", "after_move_to")
        if moved == inbox:
            raise ConfigError("after_move_to: must not be the inbox (every file would be "
                              "protected again and again)")
    return Paths(inbox, quarantine)


class Daemon:
    """The pipeline loop; construct, then `run()` (returns the exit code)."""

    def __init__(self, cfg: Config, notifier: Notifier | None = None,
                 stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.paths = check_paths(cfg)
        try:
            self.v = Vault(cfg)
        except ConfigError:
            raise
        except DispersiondError as exc:  # unreadable key and the like: fix, then start
            raise ConfigError(str(exc)) from None
        try:
            self.v.lock()
            for sc in cfg.stores:  # builds clients (no network): bad settings fail now
                try:
                    self.v.store(sc.name)
                except Unavailable as exc:  # down right now: retried like any outage
                    log.warning("store %s is unavailable at start-up: %s", sc.name, exc)
                except Exception as exc:  # noqa: BLE001 - any SDK or settings error
                    raise ConfigError(f"stores[{sc.name}]: cannot be opened: {exc}") from None
        except BaseException:
            self.v.close()
            raise
        self.notifier = notifier or Notifier()
        sch = cfg.schedule
        self.retry_base = sch.seconds("retry_base") or 5.0
        self.retry_max = max(self.retry_base, sch.seconds("retry_max") or 900.0)
        self.window = sch.window()
        self.min_free = parse_size(cfg.min_free_space)
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = stop or threading.Event()
        self.cancel = threading.Event()
        self.throttle = Throttle(sch.bandwidth(), self.cancel)
        self.tracker = ib.Stability(cfg.stable_seconds)
        self.health = {s.name: StoreHealth(self.retry_base, self.retry_max) for s in cfg.stores}
        self.uploads = ThreadPoolExecutor(cfg.upload_workers, thread_name_prefix="upload")
        self.encoders = ThreadPoolExecutor(ENCODERS, thread_name_prefix="encode")
        self.streamer = ThreadPoolExecutor(1, thread_name_prefix="encode-upload")
        self.maint = ThreadPoolExecutor(1, thread_name_prefix="maintenance")
        self.in_flight: dict[int, ObjectRow] = {}
        self.to_encode: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.to_upload: dict[str, collections.OrderedDict[int, ObjectRow]] = {
            s.name: collections.OrderedDict() for s in cfg.stores}
        self.reload_at = 0.0
        self.encoding: set[str] = set()
        self.settled: set[str] = set()  # last upload in flight came back: advance after the batch
        self.streaming: set[str] = set()  # of those, the one uploading while it is encoded
        self.encode_not_before: dict[str, float] = {}
        self.paused: str | None = None
        self.space_need = 0
        self.held_logged = False
        self.backup_due = 0.0  # monotonic: earliest next manifest backup
        self.backup_failures = 0
        self.last_backup: float | None = None  # wall clock
        self.last_backup_mono = time.monotonic()
        self.manifest_dirty = True  # until the database says otherwise
        self.swept = False
        self.sweep_tried = False
        self.finish_due = True
        self.finish_not_before = 0.0
        self.verifying = False
        self.last_verify: dict[str, Any] | None = None
        self.started = time.time()
        self.status_at = 0.0
        self.scheduler = None
        self.observer = None

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> int:
        self._install_signals()
        try:
            counts = ib.reconcile(self.v, self.paths.quarantine)
            counts["early_uploads_abandoned"] = abandon_planned(self.v)  # emptied by the sweep
            if any(counts.values()):
                event(logging.INFO, "reconciled interrupted steps", **counts)
            self._advance_all()
            self._start_watching()
            self._start_scheduler()
            self._rescan()
            self.notifier.ready(self._status_line())
            event(logging.INFO, "daemon started", pid=os.getpid(), workers=self.cfg.upload_workers)
            self.q.put(("wake",))  # a stop asked for during start-up
            while not self.stop.is_set():
                self._tick()
            return self._shutdown()
        finally:
            self.notifier.close()

    def _install_signals(self) -> None:
        def on_stop(signum, frame) -> None:
            if self.stop.is_set():
                self.cancel.set()  # second signal: do not wait for transfers
            self.stop.set()
            self.q.put(("wake",))

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, lambda s, f: self.q.put(("rescan",)))

    def _start_watching(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, ev) -> None:  # created, modified, moved, closed
                if ev.is_directory:
                    return
                path = getattr(ev, "dest_path", "") or ev.src_path
                if path:
                    daemon.q.put(("path", Path(os.fsdecode(path))))

        try:
            self.observer = Observer()
            self.observer.schedule(Handler(), str(self.paths.inbox), recursive=False)
            self.observer.daemon = True
            self.observer.start()
        except OSError as exc:  # e.g. inotify limits: the periodic rescan still finds files
            self.observer = None
            log.warning("cannot watch the inbox for events (%s); relying on the periodic "
                        "rescan (schedule.rescan)", exc)

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        sch = self.cfg.schedule
        s = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True,
                                                           "max_instances": 1,
                                                           "misfire_grace_time": 3600})
        put = self.q.put
        s.add_job(put, "interval", args=[("rescan",)], id="rescan",
                  seconds=sch.seconds("rescan"))
        s.add_job(put, "interval", args=[("backup",)], id="manifest_backup",
                  seconds=sch.seconds("manifest_backup"))
        if sch.verify:
            s.add_job(put, "interval", args=[("verify",)], id="verify",
                      seconds=sch.seconds("verify"))
        s.start()
        self.scheduler = s

    def _shutdown(self) -> int:
        self.notifier.stopping()
        self.notifier.status("stopping: finishing the steps in flight")
        event(logging.INFO, "stopping", uploads=len(self.in_flight), encodes=len(self.encoding))
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(1.0)
        deadline = time.monotonic() + STOP_GRACE
        while (self.in_flight or self.encoding) and time.monotonic() < deadline:
            self._wait_and_handle(deadline - time.monotonic())
        if self.in_flight or self.encoding:
            self.cancel.set()
            deadline = time.monotonic() + STOP_CANCEL
            while (self.in_flight or self.encoding) and time.monotonic() < deadline:
                self._wait_and_handle(deadline - time.monotonic())
        self.cancel.set()
        stuck = len(self.in_flight) + len(self.encoding)
        self._write_status(state="stopped")
        for pool in (self.uploads, self.encoders, self.streamer, self.maint):
            pool.shutdown(wait=False, cancel_futures=True)
        event(logging.INFO, "daemon stopped", interrupted=stuck)
        if stuck or self.verifying:
            # A thread is blocked inside a store call: do not wait for its timeout. Every
            # step is committed or will be redone; the exit is as safe as a crash, and clean.
            for h in logging.getLogger("dispersiond").handlers:
                h.flush()
            os._exit(0)
        self.v.close()
        return 0

    # ----------------------------------------------------------------- the loop

    def _tick(self) -> None:
        self.notifier.watchdog()
        self._wait_and_handle(self._next_wake())
        if self.stop.is_set():
            return
        self._check_space()
        if time.monotonic() >= self.reload_at:
            self._reload_queues()
        if self.paused is None:
            self._intake()
        self._start_encodes()
        self._dispatch_uploads()
        if not self.swept and not self.sweep_tried:
            self.sweep_tried = True  # once per start; before a backup it is tried again
            self._sweep_manifest_orphans()
        self._maybe_backup()
        self._finish()
        if time.monotonic() - self.status_at >= 2.0:
            self._write_status()

    def _next_wake(self) -> float:
        t = 1.0
        due = self.tracker.next_due()
        if due is not None:
            t = min(t, max(due, 0.02))
        if self.notifier.watchdog_interval:
            t = min(t, self.notifier.watchdog_interval)
        return t

    def _wait_and_handle(self, timeout: float) -> None:
        try:
            items = [self.q.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return
        while True:
            try:
                items.append(self.q.get_nowait())
            except queue.Empty:
                break
        self._record_uploads(items)
        for item in items:
            self._handle(item)
        self._advance_settled()

    def _record_uploads(self, items: list[tuple]) -> None:
        """The confirmed uploads among `items`, recorded in one transaction."""
        ok = [item[1] for item in items if item[0] == "uploaded" and item[3] is None]
        if not ok:
            return
        self.v.db.set_objects_uploaded([obj.id for obj in ok])
        for store in {obj.store for obj in ok}:
            self.v.db.store_ok(store)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "path":
            path: Path = item[1]
            if path.parent == self.paths.inbox:
                self.tracker.note(path)
        elif kind == "rescan":
            self._rescan()
        elif kind == "uploaded":
            self._on_uploaded(*item[1:])
        elif kind == "encoded":
            self._on_encoded(*item[1:])
        elif kind == "backup":
            self.manifest_dirty = True  # look at the database's flag, not only ours
            self.backup_due = 0.0
            self.last_backup_mono = -1e9  # the schedule says: back up now if anything changed
        elif kind == "verify":
            self._start_verify()
        elif kind == "verified":
            self.verifying = False
            self.last_verify = item[1]

    def _rescan(self) -> None:
        for path in ib.scan(self.paths.inbox):
            self.tracker.note(path)

    # ----------------------------------------------------------------- intake

    def _free(self) -> int:
        return shutil.disk_usage(self.v.root).free

    def _need(self, size: int, eager: Eager | None = None) -> int:
        """Local bytes an encode stages: the public fragment (n/k of it for erasure),
        padding, the private container, and slack. Sent directly (every public store
        healthy), only the private container (an eighth, plus its header) is written."""
        pol = self.cfg.public
        if eager is not None and eager.sends_directly(self.cfg):
            return int(size * 0.15) + (1 << 20)
        factor = pol.n / pol.k if pol.mode == "erasure" else 1.0
        return int(size * factor * 1.15) + (1 << 20)

    def _check_space(self) -> None:
        """Pause intake below min_free_space (plus what the next encode needs); resume
        when space returns. Uploads go on meanwhile and free the staged copies."""
        free = self._free()
        if free < self.min_free + self.space_need:
            if self.paused is None:
                self.paused = (f"disk full: {human_size(free)} free in the state directory "
                               f"{self.v.root}, below min_free_space ({human_size(self.min_free)})"
                               + (f" plus {human_size(self.space_need)} to encode the next file"
                                  if self.space_need else ""))
                log.warning("intake paused: %s; uploads go on, intake resumes when space "
                            "returns", self.paused)
                self._write_status()
        elif self.paused is not None:
            event(logging.INFO, "intake resumed", free=free)
            self.paused, self.space_need = None, 0
            self._write_status()

    def _intake(self) -> None:
        ready = self.tracker.ready()
        for start in range(0, len(ready), 256):
            if self.stop.is_set():
                return
            batch = ready[start:start + 256]
            claimed, failed = ib.claim(self.v, batch)
            for path, _ in batch:
                self.tracker.taken(path)
            for fid, size in claimed:
                self.to_encode[fid] = size
            for path, st, exc in failed:
                self.tracker.refuse(path, st)
                log.warning("a file in the inbox cannot be claimed (%s); it is left there "
                            "until it changes", exc.strerror or exc)
                log.debug("unclaimable file: %s", path)

    def _reload_queues(self) -> None:
        """Rebuild the work queues from the database: at start-up and every few seconds as
        a safety net. The queues only spare the loop a query per step; the rows decide."""
        self.reload_at = time.monotonic() + 10.0
        self.to_encode = collections.OrderedDict(
            (fid, size) for fid, size in self.v.db.claimed_sizes() if fid not in self.encoding)
        queues: dict[str, collections.OrderedDict[int, ObjectRow]] = {
            s: collections.OrderedDict() for s in self.health}
        for obj in self.v.db.upload_queue():
            if obj.id not in self.in_flight and obj.store in queues:
                queues[obj.store][obj.id] = obj
        self.to_upload = queues
        for fid in self.v.db.file_ids_in(FileState.ENCODED):
            self._advance_if_settled(fid)  # safety net: restorable files are committed
        self._advance_settled()

    def _start_encodes(self) -> None:
        """Files in arrival order. A large one uploads while it is encoded, on its own
        thread (that can take as long as its upload), if that thread is free; otherwise,
        like every other file, it is encoded by the encoder pool and uploaded after."""
        if self.stop.is_set() or not self.to_encode:
            return
        now = time.monotonic()
        for fid, size in list(self.to_encode.items()):
            if self.paused is not None:
                return
            if self.encode_not_before.get(fid, 0) > now:
                continue
            eager = self._eager() if size >= EAGER_MIN and not self.streaming else None
            if eager is None and len(self.encoding) - len(self.streaming) > ENCODERS:
                return  # the pool is busy (one file queued ahead)
            if self._free() < self.min_free + self._need(size, eager):
                self.space_need = self._need(size, eager)
                self._check_space()
                return
            del self.to_encode[fid]
            self.encoding.add(fid)
            if eager is not None:
                self.streaming.add(fid)
                self.streamer.submit(self._encode_task, fid, eager)
            else:
                self.encoders.submit(self._encode_task, fid, None)

    def _eager(self) -> Eager | None:
        """Stores a large file may start uploading to while it is encoded: the healthy
        ones, inside the upload window."""
        stores = frozenset(s for s, h in self.health.items() if h.failures == 0)
        if not stores or not self._uploads_open():
            return None
        return Eager(stores, self.throttle, self._check_cancel)

    def _encode_task(self, fid: str, eager: Eager | None) -> None:
        started = time.monotonic()
        try:
            encode(self.v, fid, self._check_cancel, eager)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.q.put(("encoded", fid, started, exc))
            return
        self.q.put(("encoded", fid, started, None))

    def _check_cancel(self, n: int) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def _on_encoded(self, fid: str, started: float, exc: BaseException | None) -> None:
        self.encoding.discard(fid)
        self.streaming.discard(fid)
        if exc is None:
            self.encode_not_before.pop(fid, None)
            for obj in self.v.db.objects(fid, states=("pending",)):
                self.to_upload[obj.store][obj.id] = obj
            self._advance_if_settled(fid)  # early uploads may have finished it already
            return
        self.maint.submit(self.v.empty_trash)  # early uploads of the failed encode, if any
        if isinstance(exc, Cancelled) or self.cancel.is_set():
            return
        shutil.rmtree(self.v.work_dir(fid), ignore_errors=True)
        if isinstance(exc, DirectUploadFailed) and isinstance(exc.cause, StoreError):
            # Not the file's fault: the store backs off, so the next encode (at once) stages
            # the object for it and sends the others early from the staged files.
            self._store_failed(exc.store, started, exc.cause)
            self.v.db.update_file(fid, error=str(exc)[:500])
            f = self.v.db.file(fid)
            self.to_encode[fid] = f.size if f else 0
            return
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            f = self.v.db.file(fid)
            self.space_need = self._need(f.size if f else 0) + (64 << 20)
            self._check_space()
            self.encode_not_before[fid] = time.monotonic() + self.retry_base
            self.to_encode[fid] = f.size if f else 0
            return
        if isinstance(exc, SourceGone):
            self._quarantine(fid, f"the file vanished or cannot be read: {exc}")
            return
        f = self.v.db.file(fid)
        attempts = (f.attempts if f else 0) + 1
        reason = f"{type(exc).__name__}: {exc}"
        if attempts >= ENCODE_ATTEMPTS:
            self._quarantine(fid, f"encoding failed {attempts} times; last: {reason}")
            return
        self.v.db.update_file(fid, attempts=attempts, error=reason)
        delay = self.retry_base * 2 ** (attempts - 1)
        self.encode_not_before[fid] = time.monotonic() + delay
        self.to_encode[fid] = f.size if f else 0
        event(logging.WARNING, "encode failed; will retry", file_id=fid, error=type(exc).__name__,
              retry_in=round(delay, 1))

    def _quarantine(self, fid: str, reason: str) -> None:
        try:
            ib.quarantine_file(self.v, fid, reason, self.paths.quarantine)
        except OSError as exc:  # the row is 'failed' already: never retried, never lost
            log.error("file %s is marked failed but could not be moved to the quarantine "
                      "folder (%s); it stays in the state directory", fid, exc)

    # ----------------------------------------------------------------- uploads

    def _uploads_open(self) -> bool:
        return in_window(self.window, dt.datetime.now())

    def _dispatch_uploads(self) -> None:
        if self.stop.is_set():
            return
        if not self._uploads_open():
            if not self.held_logged:
                opens = window_opens(self.window, dt.datetime.now())
                event(logging.INFO, "uploads held until the upload window opens",
                      opens=opens.isoformat(timespec="minutes") if opens else None)
                self.held_logged = True
            return
        self.held_logged = False
        cap = self.cfg.upload_workers * 2 - len(self.in_flight)
        if cap <= 0:
            return
        now = time.monotonic()
        per_store: dict[str, int] = {}
        for obj in self.in_flight.values():
            per_store[obj.store] = per_store.get(obj.store, 0) + 1
        for store, h in self.health.items():
            q = self.to_upload[store]
            if cap <= 0:
                break
            if not q or not h.can_send(now, per_store.get(store, 0)):
                continue
            limit = cap if h.failures == 0 else 1
            while q and limit > 0:
                _, obj = q.popitem(last=False)
                self.in_flight[obj.id] = obj
                self.uploads.submit(self._upload_task, obj)
                limit -= 1
                cap -= 1

    def _upload_task(self, obj: ObjectRow) -> None:
        started = time.monotonic()
        try:
            upload_one(self.v, obj, self.throttle, self._check_cancel, record=False)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.q.put(("uploaded", obj, started, exc))
            return
        self.q.put(("uploaded", obj, started, None))

    def _on_uploaded(self, obj: ObjectRow, started: float, exc: BaseException | None) -> None:
        self.in_flight.pop(obj.id, None)
        h = self.health[obj.store]
        if exc is None:
            if h.ok():
                event(logging.INFO, "store reachable again", store=obj.store)
                self._write_status()
            self._advance_if_settled(obj.file_id)
            return
        if isinstance(exc, Cancelled) or (self.cancel.is_set() and isinstance(exc, SourceError)):
            return
        self._advance_if_settled(obj.file_id)  # the others may suffice (k of n)
        msg = str(exc) or type(exc).__name__
        if not isinstance(exc, StoreError):
            # This object's own problem (its staged copy, or a same-named object with other
            # bytes): the store is fine and must not back off for everyone. The object is
            # picked up again by the next queue reload (every 10 s).
            self.v.db.update_file(obj.file_id, error=f"upload to {obj.store} failed: "
                                  f"{msg}"[:500], next_try=time.time() + 10)
            event(logging.WARNING, "upload failed; retrying later", file_id=obj.file_id,
                  store=obj.store, error=type(exc).__name__)
            return
        self.to_upload[obj.store][obj.id] = obj  # still pending: tried again after the wait
        self._store_failed(obj.store, started, exc)
        self.v.db.note_upload_failure(obj.file_id, h.retry_at(),
                                      f"upload to {obj.store} failed: {msg}"[:500])

    def _store_failed(self, store: str, started: float, exc: BaseException) -> None:
        """A request to `store` that began at `started` failed: back off."""
        h = self.health[store]
        msg = str(exc) or type(exc).__name__
        self.v.db.store_error(store, msg[:500])
        delay = h.fail(started, msg)
        if delay is not None:
            event(logging.WARNING, "store unavailable; backing off", store=store,
                  error=type(exc).__name__, retry_in=round(delay, 1), failures=h.failures)
            if h.failures == 1:
                self._write_status()

    def _advance_if_settled(self, fid: str) -> None:
        """Look at a file once its last upload in flight has come back, not at each one:
        noted here, advanced with the rest of the batch (`_advance_settled`)."""
        if not any(o.file_id == fid for o in self.in_flight.values()):
            self.settled.add(fid)

    def _advance_settled(self) -> None:
        fids, self.settled = self.settled, set()
        if fids:
            self._advance(fids)

    def _advance(self, fids: Iterable[str]) -> None:
        """Commit the files that became restorable (one transaction for all); drop the
        staged copies of committed ones whose every object is now confirmed."""
        rows = [f for f in map(self.v.db.file, fids) if f is not None]
        if commit_many(self.v, [f for f in rows if f.state == FileState.ENCODED]):
            self.manifest_dirty = True
        for f in rows:
            if f.state == FileState.COMMITTED and all_uploaded(self.v, f.file_id):
                shutil.rmtree(self.v.work_dir(f.file_id), ignore_errors=True)
                self.finish_due = True

    def _advance_all(self) -> None:
        """At start-up: files a crash left between steps (uploads done, commit not)."""
        self._advance(f.file_id for f in self.v.db.files_in(FileState.ENCODED,
                                                            FileState.COMMITTED))

    # ----------------------------------------------------------------- manifest, after-policy

    def _idle(self) -> bool:
        return not (self.in_flight or self.encoding or len(self.tracker) or self.to_encode)

    def _maybe_backup(self) -> None:
        now = time.monotonic()
        if now < self.backup_due or not self.manifest_dirty:
            return
        if not self.v.db.manifest_dirty():
            self.manifest_dirty = False
            return
        interval = self.cfg.schedule.seconds("manifest_backup") or 900
        if not (self._idle() or now - self.last_backup_mono >= interval):
            return
        if not any(self.health[s].can_send(now, 0) for s in self.cfg.private.stores):
            return  # every private store is backing off: the backup would only wait and fail
        if not self.swept:
            self._sweep_manifest_orphans()
        ok = backup_manifest(self.v)
        self.last_backup_mono = time.monotonic()
        if ok:
            from .ops.rekey import finish_retirements

            finish_retirements(self.v)  # revocations whose backup had not landed yet
            self.manifest_dirty = False
            self.backup_failures = 0
            self.backup_due = self.last_backup_mono + 1.0  # at most one a second
            self.last_backup = time.time()
            self.finish_due = True
            return
        self.backup_failures += 1
        delay = min(self.retry_max, self.retry_base * 2 ** (self.backup_failures - 1))
        self.backup_due = self.last_backup_mono + delay
        event(logging.WARNING, "manifest backup failed on every private store; retrying",
              retry_in=round(delay, 1))

    def _sweep_manifest_orphans(self) -> None:
        """Delete manifest backups a crash left unrecorded (sealed with our key, not newer
        than the next sequence number), so only the recorded, pruned set stays."""
        from . import manifest
        from .maintenance import _backups

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

    def _finish(self) -> None:
        """After-policy and 'done' for files fully uploaded and in a landed manifest backup."""
        now = time.monotonic()
        if not self.finish_due or now < self.finish_not_before:
            return
        self.finish_due = False
        rows = self.v.db.finishable_ids()
        handled: dict[str, str] = {}  # file id -> what became of the original
        try:
            for fid in rows:
                if self.stop.is_set():
                    self.finish_due = True
                    return
                f = self.v.db.file(fid)
                if self.cfg.grants:  # standing shares, before the original may go (idempotent)
                    from .share import apply_grants

                    apply_grants(self.v, fid)
                try:
                    handled[fid] = ib.apply_after(self.v, f)
                except OSError as exc:
                    self.v.db.update_file(fid, error=f"after-policy failed: {exc}")
                    log.error("file %s: the after-policy (%s) failed: %s; retrying in %.0f s",
                              fid, self.cfg.after, exc.strerror or exc, self.retry_max)
                    self.finish_not_before = now + min(self.retry_max, 60.0)
                    self.finish_due = True
                    return
                shutil.rmtree(self.v.work_dir(fid), ignore_errors=True)
        finally:  # one transaction for the lot (a crash before it: the after-policy is redone)
            for fid in finalize_many(self.v, handled):
                event(logging.INFO, "file done", file_id=fid, original=handled[fid])

    # ----------------------------------------------------------------- verify

    def _start_verify(self) -> None:
        if self.verifying:
            return
        down = [s for s, h in self.health.items() if h.failures]
        if down:
            self.last_verify = {"at": time.time(), "skipped": f"store(s) {', '.join(down)} "
                                "unavailable"}
            return
        self.verifying = True
        self.maint.submit(self._verify_task)

    def _verify_task(self) -> None:
        """Shallow verify in chunks, so stopping never waits for a whole run."""
        t0 = time.time()
        res: dict[str, Any] = {"at": t0, "files": 0, "objects": 0, "ok": 0, "problems": 0,
                               "unrestorable": 0}
        try:
            down = getattr(self.v, "down", None)
            if isinstance(down, set):
                down.clear()  # what failed in an earlier run says nothing about this one
            fids = self.v.db.file_ids_in(*PROTECTED)
            for i in range(0, len(fids), 200):
                if self.stop.is_set():
                    res["interrupted"] = True
                    break
                rep = verify(self.v, files=fids[i:i + 200])
                res["files"] += rep.files
                res["objects"] += rep.objects
                res["ok"] += rep.ok
                res["problems"] += len(rep.findings)
                res["unrestorable"] += len(rep.unrestorable)
                if any(p.problem == "unreachable" for p in rep.findings):
                    res["interrupted"] = True  # a store went away: try again next time
                    break
            res["seconds"] = round(time.time() - t0, 1)
            level = logging.WARNING if res["problems"] or res["unrestorable"] else logging.INFO
            event(level, "verify finished" + ("; run 'dispersiond repair'" if res["problems"]
                                               else ""), **{k: v for k, v in res.items()
                                                            if k != "at"})
        except Exception as exc:  # noqa: BLE001 - never take the daemon down
            res["error"] = str(exc)
            log.warning("verify failed: %s", exc)
        self.q.put(("verified", res))

    # ----------------------------------------------------------------- status

    def _status_line(self) -> str:
        counts = self.v.db.counts()
        S = FileState
        busy = sum(counts.get(s, 0) for s in (S.CLAIMING, S.CLAIMED, S.ENCODED, S.COMMITTED))
        parts = [f"{busy} in the pipeline, {counts.get(S.DONE, 0)} done"]
        if counts.get(S.FAILED):
            parts.append(f"{counts[S.FAILED]} quarantined")
        if self.paused:
            parts.insert(0, f"intake paused ({self.paused})")
        opens = window_opens(self.window, dt.datetime.now())
        if opens:
            parts.append(f"uploads held until {opens:%H:%M}")
        down = [s for s, h in self.health.items() if h.failures]
        if down:
            parts.append(f"retrying store(s) {', '.join(down)}")
        return "; ".join(parts)

    def _write_status(self, state: str = "running") -> None:
        """What `dispersiond status` shows about the running daemon (meta key 'daemon')."""
        self.status_at = time.monotonic()
        next_runs: dict[str, float | None] = {}
        if self.scheduler is not None and state == "running":
            for job in self.scheduler.get_jobs():
                next_runs[job.id] = job.next_run_time.timestamp() if job.next_run_time else None
        opens = window_opens(self.window, dt.datetime.now())
        if opens:
            next_runs["upload_window_opens"] = opens.timestamp()
        doc = {
            "state": state, "pid": os.getpid(), "started": self.started, "heartbeat": time.time(),
            "intake": "paused" if self.paused else "running", "paused_reason": self.paused,
            "uploads": "held" if opens else "open", "upload_window": self.cfg.schedule.upload_window,
            "bandwidth_limit": self.throttle.rate, "in_flight": {"encodes": len(self.encoding),
                                                                  "uploads": len(self.in_flight)},
            "waiting_in_inbox": len(self.tracker), "next_runs": next_runs,
            "stores": {s: {"failures": h.failures, "retry_at": h.retry_at(), "error": h.error[:300]}
                       for s, h in self.health.items()},
            "last_manifest_backup": self.last_backup, "last_verify": self.last_verify,
        }
        self.v.db.set_daemon_status(json.dumps(doc))
        if state == "running":
            self.notifier.status(self._status_line())


__all__ = ["Busy", "Daemon", "check_paths", "in_window", "window_opens"]
