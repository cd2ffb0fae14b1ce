"""The scheduled verify: shallow, in chunks, on its own thread, never while a store is down."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..logs import event, log
from ..ops.pack_checks import PackVerdicts
from ..ops.verify import verify
from ..state import PROTECTED
from ..archive import Archive
from .events import Event, Verified

#: Files per verify call: stopping never waits for a whole run.
CHUNK = 200


class Verifier:
    def __init__(self, v: Archive, stop: threading.Event, put: Callable[[Event], None],
                 pool: ThreadPoolExecutor) -> None:
        """`pool`: the one maintenance thread, shared with emptying the trash so the two
        never run at once."""
        self.v, self.stop, self.put, self.pool = v, stop, put, pool
        self.running = False
        self.last: dict[str, Any] | None = None

    def start(self, down: list[str]) -> None:
        if self.running:
            return
        if down:
            self.last = {"at": time.time(), "skipped": f"store(s) {', '.join(down)} "
                         "unavailable"}
            return
        self.running = True
        self.pool.submit(self._task)

    def done(self, ev: Verified) -> None:
        self.running = False
        self.last = ev.result

    def _task(self) -> None:
        t0 = time.time()
        res: dict[str, Any] = {"at": t0, "files": 0, "objects": 0, "ok": 0, "problems": 0,
                               "unrestorable": 0}
        try:
            down = getattr(self.v, "down", None)
            if isinstance(down, set):
                down.clear()  # what failed in an earlier run says nothing about this one
            fids = self.v.db.file_ids_in(*PROTECTED)
            packs: PackVerdicts = {}  # a pack holding members of several chunks: one check
            for i in range(0, len(fids), CHUNK):
                if self.stop.is_set():
                    res["interrupted"] = True
                    break
                rep = verify(self.v, files=fids[i:i + CHUNK], packs=packs)
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
        self.put(Verified(res))
