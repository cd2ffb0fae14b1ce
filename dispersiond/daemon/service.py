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

import gc
import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backends import Unavailable

from .. import inbox as ib
from ..config import Config
from ..errors import ConfigError, DispersiondError
from ..logs import event, log
from ..ops.encode import abandon_planned
from ..ops.held_recovery import encode_lost_again
from ..ops.packing import PackJob, packable, send_pack, spill_held, waiting_for_public
from ..ops.upload import Cancelled, Throttle, upload_one
from ..metrics import Exporter
from ..sdnotify import Notifier, hang_if_asked
from ..state import FileState, ObjectRow
from ..units import parse_size
from ..archive import Archive
from .encoder import Encoder, quarantine
from .events import (BackupNow, Encoded, Event, PackSent, PathSeen, Rescan, Uploaded,
                     Verified, VerifyNow, Wake, drain)
from .finisher import Finisher
from .intake import CLAIM_AHEAD, Intake, SpaceGate
from .watcher import Watcher
from .paths import check_paths
from .pruner import Pruner
from .status import StatusWriter, status_doc, status_line
from .uploader import Uploader
from .verifier import Verifier

#: How long in-flight work may run on after SIGTERM before it is cancelled.
STOP_GRACE = 4.0
#: How long cancelled work gets to unwind before the process exits regardless.
STOP_CANCEL = 3.0
#: Seconds between two rebuilds of the work queues from the database (a safety net).
RELOAD_EVERY = 10.0


def _open_vault(cfg: Config) -> Archive:
    """The vault, locked, with every store's client built (no network): bad settings
    fail now, as a ConfigError."""
    try:
        v = Archive(cfg)
    except ConfigError:
        raise
    except DispersiondError as exc:  # unreadable key and the like: fix, then start
        raise ConfigError(str(exc)) from None
    try:
        v.lock()
        for sc in cfg.stores:
            try:
                v.store(sc.name)
            except Unavailable as exc:  # down right now: retried like any outage
                log.warning("store %s is unavailable at start-up: %s", sc.name, exc)
            except Exception as exc:  # noqa: BLE001 - any SDK or settings error
                raise ConfigError(f"stores[{sc.name}]: cannot be opened: {exc}") from None
    except BaseException:
        v.close()
        raise
    return v


class Daemon:
    """The service: lifecycle, signals, schedules and the main loop that owns commits.
    Construct, then `run()` (returns the exit code)."""

    def __init__(self, cfg: Config, notifier: Notifier | None = None,
                 stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.paths = check_paths(cfg)
        self.v = _open_vault(cfg)
        try:
            self.metrics = Exporter(cfg, self.v.db)  # metrics: textfile and/or endpoint
        except BaseException:
            self.v.close()
            raise
        self.notifier = notifier or Notifier()
        sch = cfg.schedule
        retry_base = sch.seconds("retry_base") or 5.0
        retry_max = max(retry_base, sch.seconds("retry_max") or 900.0)
        self.q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.stop = stop or threading.Event()
        self.cancel = threading.Event()
        self.throttle = Throttle(sch.bandwidth(), self.cancel)
        self.gate = SpaceGate(self.v.root, parse_size(cfg.min_free_space))
        self.intake = Intake(self.v, self.paths.inbox, cfg.stable_seconds, self.gate)
        self.watcher = Watcher(self.paths.inbox, self.q.put)
        self.uploader = Uploader(self.v.db, [s.name for s in cfg.stores], self._send, self.q.put,
                                 workers=cfg.upload_workers, retry_base=retry_base,
                                 retry_max=retry_max, window=sch.window(),
                                 send_pack=self._send_pack,
                                 packable=lambda obj: packable(self.v, obj),
                                 pack_policy=cfg.pack,
                                 waits=lambda obj: waiting_for_public(self.v, obj),
                                 flush_at=max(self.v.held.limit // 2, 1 << 20))
        self.maintenance = ThreadPoolExecutor(1, thread_name_prefix="maintenance")
        self.encoder = Encoder(self.v, self.uploader, self.gate, self.throttle, self.q.put,
                               self._check_cancel, self._quarantine, self.maintenance,
                               retry_base=retry_base, retry_max=retry_max)
        self.finisher = Finisher(self.v, self.uploader, self.stop, self._idle,
                                 retry_base=retry_base, retry_max=retry_max)
        self.verifier = Verifier(self.v, self.stop, self.q.put, self.maintenance)
        self.pruner = Pruner(self.v, self.stop, self.maintenance)
        self.uploader.quiet = lambda: not (self.encoder.waiting or self.encoder.encoding
                                           or self.intake.waiting())
        self.status = StatusWriter(self.v.db.set_daemon_status)
        self.status_at = float("-inf")
        self.status_line = ""
        self.status_signal: tuple = ()
        self.reload_at = 0.0
        self.started = time.time()
        self.scheduler = None

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> int:
        self._install_signals()
        try:
            counts = ib.reconcile(self.v, self.paths.quarantine)
            counts["early_uploads_abandoned"] = abandon_planned(self.v)  # emptied by the sweep
            counts["encoded_again"] = encode_lost_again(self.v)  # held fragments lost
            if any(counts.values()):
                event(logging.INFO, "reconciled interrupted steps", **counts)
            self.finisher.advance_all()
            self.watcher.start()
            self._start_scheduler()
            self.intake.rescan()
            # What start-up built (modules, store clients, the config) lives as long as the
            # daemon: out of the cyclic collector's way, whose passes over it were ~3% of
            # the CPU a burst of small records takes.
            gc.freeze()
            self.notifier.ready(self._status_line())
            event(logging.INFO, "daemon started", pid=os.getpid(), workers=self.cfg.upload_workers)
            self.q.put(Wake())  # a stop asked for during start-up
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
            self.q.put(Wake())

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, lambda s, f: self.q.put(Rescan()))

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        sch = self.cfg.schedule
        s = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True,
                                                           "max_instances": 1,
                                                           "misfire_grace_time": 3600})
        put = self.q.put
        s.add_job(put, "interval", args=[Rescan()], id="rescan", seconds=sch.seconds("rescan"))
        s.add_job(put, "interval", args=[BackupNow()], id="manifest_backup",
                  seconds=sch.seconds("manifest_backup"))
        if sch.verify:
            s.add_job(put, "interval", args=[VerifyNow()], id="verify",
                      seconds=sch.seconds("verify"))
        if sch.prune:
            s.add_job(self.pruner.start, "interval", id="prune", seconds=sch.seconds("prune"))
        self.pruner.start(light=True)  # packs a killed prune or forget left without members
        s.start()
        self.scheduler = s

    def _busy(self) -> bool:
        return bool(self.uploader.in_flight or self.encoder.encoding)

    def _shutdown(self) -> int:
        self.notifier.stopping()
        self.notifier.status("stopping: finishing the steps in flight")
        event(logging.INFO, "stopping", uploads=len(self.uploader.in_flight),
              encodes=len(self.encoder.encoding))
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.watcher.stop()
        deadline = time.monotonic() + STOP_GRACE
        while self._busy() and time.monotonic() < deadline:
            self._wait_and_handle(deadline - time.monotonic())
        if self._busy():
            self.cancel.set()
            deadline = time.monotonic() + STOP_CANCEL
            while self._busy() and time.monotonic() < deadline:
                self._wait_and_handle(deadline - time.monotonic())
        self.cancel.set()
        spill_held(self.v, self.v.held.files())  # what waits for a pack: kept, not re-encoded
        stuck = len(self.uploader.in_flight) + len(self.encoder.encoding)
        final = self._status_doc("stopped")
        self.status.offer(final, force=True)
        self.metrics.update(final, final=True)
        self.uploader.shutdown()
        self.encoder.shutdown()
        self.maintenance.shutdown(wait=False, cancel_futures=True)
        event(logging.INFO, "daemon stopped", interrupted=stuck)
        if stuck or self.verifier.running or self.pruner.running:
            # A thread is blocked inside a store call: do not wait for its timeout. Every
            # step is committed or will be redone; the exit is as safe as a crash, and clean.
            for h in logging.getLogger("dispersiond").handlers:
                h.flush()
            os._exit(0)
        self.v.close()
        return 0

    # ----------------------------------------------------------------- the loop

    def _tick(self) -> None:
        hang_if_asked(self.started)  # TEST-ONLY: DISPERSIOND_TEST_HANG_AFTER (sdnotify.py)
        self.notifier.watchdog()
        self._wait_and_handle(self._next_wake())
        if self.stop.is_set():
            return
        self.gate.tick(time.monotonic())
        if time.monotonic() >= self.reload_at:
            self._reload_queues()
        room = CLAIM_AHEAD - len(self.encoder.waiting)
        for fid, size in self.intake.claim(self.stop, room):
            self.encoder.add(fid, size)
        self.encoder.start(self.stop.is_set())
        if not self.stop.is_set():
            self.uploader.dispatch()
        self.finisher.sweep_once()
        self.finisher.maybe_backup()
        self.finisher.finish()
        self._write_status()

    def _next_wake(self) -> float:
        t = 1.0
        due = self.intake.next_due()
        if due is not None:
            t = min(t, max(due, 0.02))
        flush = self.uploader.flush_due_in()
        if flush is not None:
            t = min(t, max(flush, 0.01))
        backup = self.finisher.backup_due_in()
        if backup is not None:
            t = min(t, max(backup, 0.01))
        ping = self.notifier.watchdog_due_in()
        if ping is not None:
            t = min(t, max(ping, 0.01))
        return t

    def _wait_and_handle(self, timeout: float) -> None:
        events = drain(self.q, timeout)
        if not events:
            return
        self.uploader.record([ev for ev in events if isinstance(ev, Uploaded)])
        for ev in events:
            self.handle(ev)
        self.finisher.advance_settled()

    def handle(self, ev: Event) -> None:
        """One event from the queue, on the main thread."""
        cancelling = self.cancel.is_set()
        if isinstance(ev, PathSeen):
            for path in ev.paths:
                self.intake.seen(path)
        elif isinstance(ev, Rescan):
            self.intake.rescan()
        elif isinstance(ev, Uploaded):
            fid = self.uploader.on_uploaded(ev, cancelling)
            if fid is not None:
                self.finisher.settle(fid)
        elif isinstance(ev, PackSent):
            for fid in self.uploader.on_pack_sent(ev, cancelling):
                self.finisher.settle(fid)
        elif isinstance(ev, Encoded):  # one file, or a batch of small ones
            for fid in self.encoder.on_encoded(ev, cancelling):
                self.finisher.settle(fid)  # early uploads may have finished it already
        elif isinstance(ev, BackupNow):
            self.finisher.backup_now()
        elif isinstance(ev, VerifyNow):
            self.verifier.start(self.uploader.down())
        elif isinstance(ev, Verified):
            self.verifier.done(ev)
        elif not isinstance(ev, Wake):
            raise TypeError(f"the daemon's loop got an unknown event {ev!r}")

    def _reload_queues(self) -> None:
        """Rebuild the work queues from the database: at start-up and every few seconds as
        a safety net. The queues only spare the loop a query per step; the rows decide."""
        self.reload_at = time.monotonic() + RELOAD_EVERY
        self.encoder.reload(self.v.db.claimed_sizes())
        self.uploader.reload(self.v.db.upload_queue())
        for fid in self.v.db.file_ids_in(FileState.ENCODED):
            self.finisher.settle(fid)  # safety net: restorable files are committed
        self.finisher.advance_settled()

    def _idle(self) -> bool:
        return not (self._busy() or self.intake.waiting() or self.encoder.waiting
                    or self.uploader.about_to_send())

    # ----------------------------------------------------------------- workers' helpers

    def _send(self, obj: ObjectRow) -> None:
        upload_one(self.v, obj, self.throttle, self._check_cancel, record=False)

    def _send_pack(self, job: PackJob) -> None:
        send_pack(self.v, job, self.throttle, self._check_cancel)

    def _check_cancel(self, n: int) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def _quarantine(self, fid: str, reason: str) -> None:
        quarantine(self.v, self.paths.quarantine, fid, reason)

    # ----------------------------------------------------------------- status

    def _status_line(self) -> str:
        return status_line(self.v.db.counts(), self.gate.paused, self.uploader.opens(),
                           self.uploader.down())

    def _status_doc(self, state: str = "running") -> dict[str, Any]:
        next_runs: dict[str, float | None] = {}
        if self.scheduler is not None and state == "running":
            for job in self.scheduler.get_jobs():
                next_runs[job.id] = job.next_run_time.timestamp() if job.next_run_time else None
        return status_doc(
            state=state, started=self.started, paused=self.gate.paused,
            opens=self.uploader.opens(), upload_window=self.cfg.schedule.upload_window,
            bandwidth_limit=self.throttle.rate, encodes=len(self.encoder.encoding),
            uploads=len(self.uploader.in_flight), waiting=self.intake.waiting(),
            next_runs=next_runs, health=self.uploader.health,
            last_backup=self.finisher.last_backup, last_verify=self.verifier.last)

    def _write_status(self) -> None:
        """Offer the document to the writer (it writes only what changed) and send the
        STATUS= line when it changed; looked at every MIN_INTERVAL seconds."""
        now = time.monotonic()
        # A store starting or ceasing to fail, or intake pausing or resuming, is written
        # at once (what `status` shows an operator during an outage); the rest is throttled.
        signal = (self.gate.paused, tuple(h.failing for h in self.uploader.health.values()))
        urgent = signal != self.status_signal
        if not urgent and now - self.status_at < self.status.min_interval:
            return
        self.status_at, self.status_signal = now, signal
        doc = self._status_doc()
        self.status.offer(doc, force=urgent)
        self.metrics.update(doc, final=False)  # metrics: on their own schedule
        line = self._status_line()
        if line != self.status_line:
            self.status_line = line
            self.notifier.status(line)
