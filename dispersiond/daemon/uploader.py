"""Uploads: one queue per store, what is in flight, each store's health, the window.

Stores fail independently: while one backs off nothing is sent to it but, once the wait
is over, a single probe; the others keep moving. Requests run on a pool and report back
as Uploaded events; the main loop records them (`record`, one transaction a batch) and
hands each to `on_uploaded`.
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
from ..ops.upload import Cancelled
from ..state import ObjectRow, StateDB
from .events import Event, Uploaded
from .health import StoreHealth
from .window import Window, in_window, window_opens

#: Sends one object (raises on failure); runs on the pool.
Send = Callable[[ObjectRow], None]
#: How soon an object whose own upload failed (not its store) is looked at again.
OBJECT_RETRY = 10.0


class Uploader:
    """Per-store queues and health; dispatch under the upload window."""

    def __init__(self, db: StateDB, stores: Iterable[str], send: Send,
                 put: Callable[[Event], None], *, workers: int, retry_base: float,
                 retry_max: float, window: Window | None = None) -> None:
        self.db, self.send, self.put = db, send, put
        self.workers, self.window = workers, window
        self.health = {s: StoreHealth(retry_base, retry_max) for s in stores}
        self.queues: dict[str, collections.OrderedDict[int, ObjectRow]] = {
            s: collections.OrderedDict() for s in self.health}
        self.in_flight: dict[int, ObjectRow] = {}
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
        return any(o.file_id == fid for o in self.in_flight.values())

    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    # --- queues

    def enqueue(self, objs: Iterable[ObjectRow]) -> None:
        for obj in objs:
            if obj.store in self.queues and obj.id not in self.in_flight:
                self.queues[obj.store][obj.id] = obj

    def reload(self, rows: Iterable[ObjectRow]) -> None:
        """Rebuild the queues from the database's pending objects (the rows decide)."""
        for q in self.queues.values():
            q.clear()
        self.enqueue(rows)

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
        for store, h in self.health.items():
            q = self.queues[store]
            if cap <= 0:
                break
            if not q or not h.can_send(now, per_store.get(store, 0)):
                continue
            limit = 1 if h.failing else cap  # a failing store gets one probe
            while q and limit > 0:
                _, obj = q.popitem(last=False)
                self.in_flight[obj.id] = obj
                self.pool.submit(self._task, obj)
                limit -= 1
                cap -= 1

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
        self.in_flight.pop(obj.id, None)
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
