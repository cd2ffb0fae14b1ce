"""The scheduled prune (schedule.prune), on the maintenance thread so it never runs beside
verify or the trash being emptied; and a light pass at start-up that deletes the packs a
killed prune or forget left without members (once a manifest backup allows it)."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..logs import event, log
from ..ops.prune import housekeeping, prune
from ..archive import Archive


class Pruner:
    def __init__(self, v: Archive, stop: threading.Event, pool: ThreadPoolExecutor) -> None:
        """`pool`: the daemon's one maintenance thread."""
        self.v, self.stop, self.pool = v, stop, pool
        self.running = False
        self.last: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def start(self, light: bool = False) -> None:
        """Queue a run (called by the scheduler's thread); one at a time."""
        with self._lock:
            if self.running or self.stop.is_set():
                return
            self.running = True
        try:
            self.pool.submit(self._task, light)
        except RuntimeError:  # the pool is shut down: the daemon is stopping
            self.running = False

    def _task(self, light: bool) -> None:
        res: dict[str, Any] = {"at": time.time(), "light": light}
        try:
            if light:
                deleted, waiting = housekeeping(self.v, exclusive=False)
                res.update(deleted=len(deleted), waiting=len(waiting))
                if deleted or waiting:
                    event(logging.INFO, "packs without members released", **res)
            else:  # the daemon's own uploads go on meanwhile: never exclusive
                rep = prune(self.v, exclusive=False, stop=self.stop)
                res.update(packs=len(rep.decisions), repacked=len(rep.new_packs),
                           deleted=len(rep.deleted), waiting=len(rep.waiting),
                           failed=len(rep.failed), freed_bytes=rep.freed_bytes,
                           interrupted=rep.interrupted)
            if res.get("waiting"):
                self._again()
        except Exception as exc:  # noqa: BLE001 - never take the daemon down
            res["error"] = str(exc)
            log.warning("prune failed (tried again on schedule): %s", exc)
        finally:
            self.last = res
            self.running = False

    def _again(self) -> None:
        """Packs wait for the main loop's next manifest backup: look again after it."""
        delay = (self.v.cfg.schedule.seconds("manifest_backup") or 900.0) + 1.0
        timer = threading.Timer(delay, self.start, kwargs={"light": True})
        timer.daemon = True
        timer.start()
