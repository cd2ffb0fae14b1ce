"""Uploads: one queue per store, what is in flight, each store's health, the window.

Stores fail independently: while one backs off nothing is sent to it but, once the wait
is over, a single probe; the others keep moving. Requests run on a pool and report back
as Uploaded events; the main loop records them (`record`, one transaction a batch) and
hands each to `on_uploaded`.

Small fragments wait in a per-store pack buffer instead (docs/FORMAT.md §8): it is
flushed, as one pack per kind, once it holds `pack_size` bytes or PRIVATE_PACK_FILES
private containers, once its oldest member has waited `max_wait`, or once nothing more
is on the way (`quiet`) and no member has arrived for LINGER seconds; a pack reports
back as one PackSent event.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from backends import SourceError, StoreError

from ..logs import event
from ..ops.packing import PackJob, plan_packs
from ..ops.upload import Cancelled
from ..pack import PackPolicy
from ..state import ObjectRow, StateDB
from .events import Event, PackSent, Uploaded
from .health import StoreHealth
from .window import Window, in_window, window_opens

#: Sends one object (raises on failure); runs on the pool.
Send = Callable[[ObjectRow], None]
#: Sends one pack (builds, uploads and commits it; raises on failure); runs on the pool.
SendPack = Callable[[PackJob], None]
#: How soon an object whose own upload failed (not its store) is looked at again.
OBJECT_RETRY = 10.0
#: With nothing more on the way, how long a pack buffer waits for one more member (at
#: least; a trickle's buffer waits twice its records' recent spacing).
LINGER = 0.05
#: A buffer holding this many private containers is due at once, busy or not: the files
#: of a burst then commit (and become restorable) as it goes, a private pack after each
#: public one, instead of all of them after a single private pack at the burst's end.
PRIVATE_PACK_FILES = 256
#: An arrival of more members than this is a burst's batch, not a trickle's record: it
#: ends the trickle, so the buffer does not linger after the burst's last batch (it did,
#: twice the batches' spacing, 0.3-1.8 s at the end of a 1,000-record burst).
TRICKLE_MEMBERS = 8
#: A pack buffer due within this many seconds holds a manifest backup back (`about_to_send`).
SOON = 0.1
#: The arrival spacing is a moving average: this weight for the newest gap, and no gap
#: counted as longer than SPACING_CAP seconds.
SPACING_WEIGHT = 0.3
SPACING_CAP = 5.0


class PackBuffer:
    """One store's small fragments waiting for their pack."""

    def __init__(self) -> None:
        self.objs: collections.OrderedDict[int, ObjectRow] = collections.OrderedDict()
        self.since = 0.0  # monotonic: when the oldest waiting member arrived
        self.touched = 0.0  # ... and the newest
        self.last = 0.0  # monotonic: the newest arrival of a new member, across flushes
        self.spacing: float | None = None  # recent seconds between arrivals (averaged)
        self.arrival = 0  # members of the newest arrival

    def add(self, obj: ObjectRow, now: float, fresh: bool = True) -> None:
        """`fresh`=False: a member that is no new arrival (a queue reload re-adding what
        it knows, a parked container that waited for its public fragments): it starts an
        empty buffer's max_wait clock but teaches nothing, so it neither delays a quiet
        flush nor looks like a trickle."""
        if not self.objs:
            self.since = now
        if not fresh:
            self.objs[obj.id] = obj
            return
        if obj.id not in self.objs:
            self._arrived(now)
        self.objs[obj.id] = obj
        self.touched = max(self.touched, now)

    def _arrived(self, now: float) -> None:
        # Members of one encoded batch come in one call at one instant: that is one
        # arrival. The spacing is averaged so that a trickle delivered in small clumps (a
        # few records, then a pause) keeps lingering; a gap longer than max_wait counts as
        # max_wait, so an hour's silence is forgotten after a few records, not dozens. An
        # arrival of more than TRICKLE_MEMBERS is a burst's batch: no trickle to wait for.
        if self.last and now > self.last + 1e-3:
            gap = min(now - self.last, SPACING_CAP)
            self.spacing = gap if self.spacing is None else (
                SPACING_WEIGHT * gap + (1 - SPACING_WEIGHT) * self.spacing)
            self.arrival = 0
        if now > self.last:
            self.last = now
        self.arrival += 1
        if self.arrival > TRICKLE_MEMBERS:
            self.spacing = None

    def bytes(self) -> int:
        return sum(o.length for o in self.objs.values())

    def linger(self, policy: PackPolicy) -> float:
        """How long a quiet buffer waits for one more member: LINGER after a burst or a
        lone record, twice the recent spacing for a trickle (records a few hundred ms
        apart then share a pack, still within max_wait)."""
        if self.spacing is None or self.spacing >= policy.max_wait / 2:
            return LINGER
        return max(LINGER, 2 * self.spacing)

    def due_in(self, policy: PackPolicy, quiet: bool, now: float,
               full: int | None = None) -> float | None:
        """Seconds until this buffer should be flushed (0: now); None when empty. `full`:
        the bytes at which it is flushed (default and at most `pack_size`)."""
        if not self.objs:
            return None
        if self.bytes() >= min(policy.pack_size, full or policy.pack_size):
            return 0.0
        if len(self.objs) >= PRIVATE_PACK_FILES and sum(
                o.role == "private" for o in self.objs.values()) >= PRIVATE_PACK_FILES:
            return 0.0
        due = self.since + policy.max_wait - now
        if quiet:
            due = min(due, self.touched + self.linger(policy) - now)
        return max(0.0, due)


class Uploader:
    """Per-store queues and health; dispatch under the upload window."""

    def __init__(self, db: StateDB, stores: Iterable[str], send: Send,
                 put: Callable[[Event], None], *, workers: int, retry_base: float,
                 retry_max: float, window: Window | None = None,
                 send_pack: SendPack | None = None,
                 packable: Callable[[ObjectRow], bool] | None = None,
                 pack_policy: PackPolicy | None = None,
                 waits: Callable[[ObjectRow], bool] | None = None,
                 flush_at: int | None = None) -> None:
        self.db, self.send, self.put = db, send, put
        self.workers, self.window = workers, window
        self.send_pack, self.packable = send_pack, packable
        #: Must this (packable) object wait for its file's held public fragments to
        #: land (a private container, held.py)? Such rows are parked until they have.
        self.waits = waits
        self.parked: dict[int, ObjectRow] = {}
        #: A buffer is flushed once it holds this many bytes (at most pack_size): what
        #: keeps the held fragments within their memory budget, a pack going up while
        #: the next is encoded.
        self.flush_at = flush_at
        self.pack_policy = pack_policy or PackPolicy()
        #: Is nothing more on the way (no file waiting or being encoded)? Set by the daemon.
        self.quiet: Callable[[], bool] = lambda: True
        self.health = {s: StoreHealth(retry_base, retry_max) for s in stores}
        self.queues: dict[str, collections.OrderedDict[int, ObjectRow]] = {
            s: collections.OrderedDict() for s in self.health}
        self.buffers = {s: PackBuffer() for s in self.health}
        self.in_flight: dict[int, ObjectRow] = {}
        #: In-flight uploads per file: `sending` is asked once per outcome, and a scan of
        #: `in_flight` each time made a burst of small files quadratic.
        self.flying: collections.Counter[str] = collections.Counter()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="upload")
        self.held_logged = False

    # --- what others ask

    def is_open(self, now: dt.datetime | None = None) -> bool:
        return in_window(self.window, now or dt.datetime.now())

    def opens(self, now: dt.datetime | None = None) -> dt.datetime | None:
        return window_opens(self.window, now or dt.datetime.now())

    def healthy(self) -> frozenset[str]:
        return frozenset(s for s, h in self.health.items() if not h.failing)

    def down(self) -> list[str]:
        return [s for s, h in self.health.items() if h.failing]

    def sending(self, fid: str) -> bool:
        """Is an upload of one of `fid`'s objects still in flight?"""
        return self.flying[fid] > 0

    def pending(self) -> int:
        return (sum(len(q) for q in self.queues.values())
                + sum(len(b.objs) for b in self.buffers.values()) + len(self.parked))

    def about_to_send(self, now: float | None = None) -> bool:
        """Is anything queued, or in a pack buffer due within SOON seconds, for a store
        that will take it (not backing off, the window open)? A manifest backup waits
        for it: one taken while a burst's last pack lingers misses that pack's files,
        and theirs then waits out the backups' spacing (up to 1.7 s more at the end of a
        burst). A buffer that waits longer (a trickle's) does not hold the backup back:
        under a steady trickle some buffer always waits, and the backups would starve."""
        if not self.is_open():
            return False
        now = time.monotonic() if now is None else now
        quiet = self.quiet()
        for store, h in self.health.items():
            if h.failing:
                continue
            due = self.buffers[store].due_in(self.pack_policy, quiet, now, self.flush_at)
            if self.queues[store] or (due is not None and due <= SOON):
                return True
        return False

    def flush_due_in(self, now: float | None = None) -> float | None:
        """Seconds until a pack buffer is due (for the loop's wake-up); None: none waits."""
        now = time.monotonic() if now is None else now
        quiet = self.quiet()
        dues = [d for b in self.buffers.values()
                if (d := b.due_in(self.pack_policy, quiet, now, self.flush_at)) is not None]
        return min(dues, default=None)

    # --- queues

    def enqueue(self, objs: Iterable[ObjectRow], now: float | None = None,
                fresh: bool = True) -> None:
        now = time.monotonic() if now is None else now
        for obj in objs:
            if obj.store not in self.queues or obj.id in self.in_flight:
                continue
            if self.send_pack is not None and self.packable is not None and self.packable(obj):
                if self.waits is not None and self.waits(obj):
                    self.parked[obj.id] = obj
                else:
                    self.buffers[obj.store].add(obj, now, fresh)
            else:
                self.queues[obj.store][obj.id] = obj

    def reload(self, rows: Iterable[ObjectRow]) -> None:
        """Rebuild the queues from the database's pending objects (the rows decide). A
        pack buffer keeps its clock: a reload must not postpone a flush."""
        now = time.monotonic()
        since = {s: (b.since, b.touched) for s, b in self.buffers.items() if b.objs}
        for q in self.queues.values():
            q.clear()
        for b in self.buffers.values():
            b.objs.clear()
        self.parked.clear()
        self.enqueue(rows, now, fresh=False)
        for s, (t0, t1) in since.items():
            b = self.buffers[s]
            if b.objs:
                b.since, b.touched = min(b.since, t0), max(t0, min(b.touched, t1))

    def dispatch(self, now: float | None = None) -> None:
        """Start what the window, the in-flight cap and each store's health allow."""
        if not self.is_open():
            if not self.held_logged:
                opens = self.opens()
                event(logging.INFO, "uploads held until the upload window opens",
                      opens=opens.isoformat(timespec="minutes") if opens else None)
                self.held_logged = True
            return
        self.held_logged = False
        cap = self.workers * 2 - len(self.in_flight)
        if cap <= 0:
            return
        now = time.monotonic() if now is None else now
        per_store: dict[str, int] = {}
        for obj in self.in_flight.values():
            per_store[obj.store] = per_store.get(obj.store, 0) + 1
        quiet = self.quiet()
        for store, h in self.health.items():
            q = self.queues[store]
            if cap <= 0:
                break
            buf = self.buffers[store]
            if buf.due_in(self.pack_policy, quiet, now, self.flush_at) == 0.0 \
                    and h.can_send(now, per_store.get(store, 0)):
                cap -= self._flush(store, buf, 1 if h.failing else cap)
            if not q or not h.can_send(now, per_store.get(store, 0)):
                continue
            limit = 1 if h.failing else cap  # a failing store gets one probe
            while q and limit > 0:
                _, obj = q.popitem(last=False)
                self._fly(obj)
                self.pool.submit(self._task, obj)
                limit -= 1
                cap -= 1

    def _fly(self, obj: ObjectRow) -> None:
        if obj.id not in self.in_flight:
            self.flying[obj.file_id] += 1
        self.in_flight[obj.id] = obj

    def _land(self, obj: ObjectRow) -> None:
        if self.in_flight.pop(obj.id, None) is not None:
            self.flying[obj.file_id] -= 1
            if self.flying[obj.file_id] <= 0:
                del self.flying[obj.file_id]

    def _flush(self, store: str, buf: PackBuffer, limit: int) -> int:
        """Start up to `limit` packs from `store`'s buffer; returns how many started."""
        started = 0
        for job in plan_packs(buf.objs.values(), self.pack_policy.pack_size):
            if started >= limit:
                break
            for obj in job.objs:
                del buf.objs[obj.id]
                self._fly(obj)
            self.pool.submit(self._pack_task, job)
            started += 1
        if buf.objs:  # what is left waits its turn, due at once
            buf.since = min(buf.since, time.monotonic() - self.pack_policy.max_wait)
        return started

    def _pack_task(self, job: PackJob) -> None:
        started = time.monotonic()
        try:
            assert self.send_pack is not None
            self.send_pack(job)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.put(PackSent(job.store, job.objs, started, exc))
            return
        self.put(PackSent(job.store, job.objs, started))

    def _task(self, obj: ObjectRow) -> None:
        started = time.monotonic()
        try:
            self.send(obj)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.put(Uploaded(obj, started, exc))
            return
        self.put(Uploaded(obj, started))

    # --- outcomes (main thread)

    def record(self, done: list[Uploaded]) -> None:
        """The confirmed uploads of a batch, recorded in one transaction."""
        ok = [ev.obj for ev in done if ev.error is None]
        if not ok:
            return
        self.db.set_objects_uploaded([obj.id for obj in ok])
        for store in {obj.store for obj in ok}:
            self.db.store_ok(store)

    def on_uploaded(self, ev: Uploaded, cancelling: bool) -> str | None:
        """Book one outcome; returns the file to look at once its uploads settle (None:
        the upload was cancelled by a stop and resumes at the next start)."""
        obj, exc = ev.obj, ev.error
        self._land(obj)
        h = self.health[obj.store]
        if exc is None:
            if h.recover():
                event(logging.INFO, "store reachable again", store=obj.store)
            return obj.file_id
        if isinstance(exc, Cancelled) or (cancelling and isinstance(exc, SourceError)):
            return None
        msg = str(exc) or type(exc).__name__
        if not isinstance(exc, StoreError):
            # This object's own problem (its staged copy, or a same-named object with other
            # bytes): the store is fine and must not back off for everyone. The object is
            # picked up again by the next queue reload.
            self.db.update_file(obj.file_id, error=f"upload to {obj.store} failed: "
                                f"{msg}"[:500], next_try=time.time() + OBJECT_RETRY)
            event(logging.WARNING, "upload failed; retrying later", file_id=obj.file_id,
                  store=obj.store, error=type(exc).__name__)
            return obj.file_id  # the others may suffice (k of n)
        self.queues[obj.store][obj.id] = obj  # still pending: tried again after the wait
        self.store_failed(obj.store, ev.started, exc)
        self.db.note_upload_failure(obj.file_id, h.retry_at or time.time(),
                                    f"upload to {obj.store} failed: {msg}"[:500])
        return obj.file_id

    def on_pack_sent(self, ev: PackSent, cancelling: bool) -> set[str]:
        """Book one pack's outcome (its rows were committed by the task); returns the
        files to look at."""
        for obj in ev.objs:
            self._land(obj)
        fids = {obj.file_id for obj in ev.objs}
        self.unpark(fids)  # landed, or written out by the failed task: containers may go
        h, exc = self.health[ev.store], ev.error
        if exc is None:
            if h.recover():
                event(logging.INFO, "store reachable again", store=ev.store)
            return fids
        if isinstance(exc, Cancelled) or (cancelling and isinstance(exc, SourceError)):
            return set()
        msg = str(exc) or type(exc).__name__
        if not isinstance(exc, StoreError):
            # a member's own problem (its staged copy): not the store's; the rows decide
            # again at the next queue reload
            for fid in fids:
                self.db.update_file(fid, error=f"pack upload to {ev.store} failed: {msg}"[:500],
                                    next_try=time.time() + OBJECT_RETRY)
            event(logging.WARNING, "pack upload failed; retrying later", store=ev.store,
                  error=type(exc).__name__)
            return fids
        now = time.monotonic()
        for obj in ev.objs:  # still pending: packed again (under a new name) after the wait
            self.buffers[ev.store].add(obj, now - self.pack_policy.max_wait, fresh=False)
        self.store_failed(ev.store, ev.started, exc)
        for fid in fids:
            self.db.note_upload_failure(fid, h.retry_at or time.time(),
                                        f"pack upload to {ev.store} failed: {msg}"[:500])
        return fids

    def unpark(self, fids: set[str], now: float | None = None) -> None:
        """Parked rows of `fids` that need not wait any more go to their pack buffers."""
        if not self.parked:
            return
        now = time.monotonic() if now is None else now
        for oid, obj in list(self.parked.items()):
            if obj.file_id in fids and not (self.waits and self.waits(obj)):
                del self.parked[oid]  # due as soon as nothing more is on the way
                self.buffers[obj.store].add(obj, now, fresh=False)

    def store_failed(self, store: str, started: float, exc: BaseException) -> None:
        """A request to `store` that began at `started` failed: back off."""
        h = self.health[store]
        msg = str(exc) or type(exc).__name__
        self.db.store_error(store, msg[:500])
        wait = h.fail(time.monotonic(), msg, started)
        if wait is not None:
            event(logging.WARNING, "store unavailable; backing off", store=store,
                  error=type(exc).__name__, retry_in=round(wait, 1), failures=h.failures)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
