"""What `dispersiond status` and systemd see of the running daemon.

The document goes into the state database (meta key 'daemon'), which is synchronous and
on flash: it is written only when its content changed, at most every `min_interval`
seconds, and otherwise once every `heartbeat_every` seconds so its `heartbeat` shows
the daemon is alive (the heartbeat itself is not part of the change test). Whether a
daemon runs is decided by its lock on the state directory, not by this document.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..state import FileState
from .health import StoreHealth

#: Seconds between two writes of a changed document at most.
MIN_INTERVAL = 2.0
#: Seconds between writes of an unchanged document (the heartbeat).
HEARTBEAT_EVERY = 60.0
#: Fields that change on every look and say nothing by themselves.
VOLATILE = frozenset({"heartbeat"})


def status_line(counts: Mapping[str, int], paused: str | None, opens: dt.datetime | None,
                down: list[str]) -> str:
    """The STATUS= line systemd shows: the pipeline in one line."""
    S = FileState
    busy = sum(counts.get(s, 0) for s in (S.CLAIMING, S.CLAIMED, S.ENCODED, S.COMMITTED))
    parts = [f"{busy} in the pipeline, {counts.get(S.DONE, 0)} done"]
    if counts.get(S.FAILED):
        parts.append(f"{counts[S.FAILED]} quarantined")
    if paused:
        parts.insert(0, f"intake paused ({paused})")
    if opens:
        parts.append(f"uploads held until {opens:%H:%M}")
    if down:
        parts.append(f"retrying store(s) {', '.join(down)}")
    return "; ".join(parts)


def status_doc(*, state: str, started: float, paused: str | None, opens: dt.datetime | None,
               upload_window: str | None, bandwidth_limit: float | None, encodes: int,
               uploads: int, waiting: int, next_runs: dict[str, float | None],
               health: Mapping[str, StoreHealth], last_backup: float | None,
               last_verify: dict[str, Any] | None) -> dict[str, Any]:
    """What `dispersiond status` shows about the running daemon (meta key 'daemon')."""
    if opens:
        next_runs = {**next_runs, "upload_window_opens": opens.timestamp()}
    return {
        "state": state, "pid": os.getpid(), "started": started, "heartbeat": time.time(),
        "intake": "paused" if paused else "running", "paused_reason": paused,
        "uploads": "held" if opens else "open", "upload_window": upload_window,
        "bandwidth_limit": bandwidth_limit,
        "in_flight": {"encodes": encodes, "uploads": uploads},
        "waiting_in_inbox": waiting, "next_runs": next_runs,
        "stores": {s: {"failures": h.failures, "retry_at": h.retry_at, "error": h.error[:300]}
                   for s, h in health.items()},
        "last_manifest_backup": last_backup, "last_verify": last_verify,
    }


class StatusWriter:
    """Writes the status document when it changed (throttled) or when the heartbeat is due."""

    def __init__(self, write: Callable[[str], None], *, min_interval: float = MIN_INTERVAL,
                 heartbeat_every: float = HEARTBEAT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.clock = write, clock
        self.min_interval, self.heartbeat_every = min_interval, heartbeat_every
        self.last: dict[str, Any] | None = None
        self.written_at = float("-inf")
        self.writes = 0

    def offer(self, doc: dict[str, Any], force: bool = False) -> bool:
        """Write `doc` if due; True if it was written. `force`: the last word (stopping)."""
        now = self.clock()
        body = {k: v for k, v in doc.items() if k not in VOLATILE}
        since = now - self.written_at
        if not force:
            if body == self.last and since < self.heartbeat_every:
                return False
            if since < self.min_interval:
                return False  # changed, but written a moment ago: the next look writes it
        self.write(json.dumps(doc))
        self.last, self.written_at = body, now
        self.writes += 1
        return True
