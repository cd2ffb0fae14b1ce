"""Taking files in: stability, claiming, and the free-space gate (the watcher that
sees files arrive is in watcher.py)."""
from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from .. import inbox as ib
from ..logs import event, log
from ..units import human_size
from ..archive import Archive

#: Seconds between the main loop's looks at free space while intake runs (paused, it
#: looks at every turn): each look is a syscall, and a syscall on the loop waits for the
#: GIL the encoder threads hold, a few ms each, at every turn of a busy loop.
CHECK_EVERY = 0.25
#: Claims per transaction: keeps a burst of small files cheap without one huge batch.
CLAIM_BATCH = 256
#: Claimed files the encoder may have waiting: the rest of a burst stays in the inbox
#: (and in the tracker) until it has room, so what the daemon holds for a burst does not
#: grow with it (a claimed file waiting holds its stat, its row and its events). A
#: 10,000-file burst claimed at once left 59 of Python's 1 MiB arenas allocated to the
#: end; claimed 512 ahead, 54.
CLAIM_AHEAD = 512


class SpaceGate:
    """Pauses intake below min_free_space (plus what the next encode needs) and resumes
    it when space returns; uploads go on meanwhile and free the staged copies."""

    def __init__(self, root: Path, min_free: int,
                 free: Callable[[], int] | None = None) -> None:
        self.root, self.min_free = root, min_free
        self.free = free or (lambda: shutil.disk_usage(root).free)
        self.paused: str | None = None  # why, while paused
        self.need = 0  # bytes the next encode needs beyond min_free
        self.checked = -1e9  # monotonic: the last look (`tick`)

    def allows(self, need: int) -> bool:
        """Is there room for an encode that stages `need` bytes?"""
        return self.free() >= self.min_free + need

    def require(self, need: int) -> None:
        """The next encode needs `need` bytes: pause until they are there."""
        self.need = need
        self.check()

    def tick(self, now: float) -> None:
        """The loop's look: at most every CHECK_EVERY seconds unless paused (each encode
        asks `allows` for its own space all the same)."""
        if self.paused is not None or now >= self.checked + CHECK_EVERY:
            self.checked = now
            self.check()

    def check(self) -> None:
        free = self.free()
        if free < self.min_free + self.need:
            if self.paused is None:
                self.paused = (f"disk full: {human_size(free)} free in the state directory "
                               f"{self.root}, below min_free_space ({human_size(self.min_free)})"
                               + (f" plus {human_size(self.need)} to encode the next file"
                                  if self.need else ""))
                log.warning("intake paused: %s; uploads go on, intake resumes when space "
                            "returns", self.paused)
        elif self.paused is not None:
            event(logging.INFO, "intake resumed", free=free)
            self.paused, self.need = None, 0


class Intake:
    """Inbox files from first sight to claimed: stability, then claims in batches."""

    def __init__(self, v: Archive, inbox: Path, stable_seconds: float, gate: SpaceGate) -> None:
        self.v, self.inbox, self.gate = v, inbox, gate
        self._inbox = os.fspath(inbox)  # what the watcher's paths start with
        self.tracker = ib.Stability(stable_seconds)

    def seen(self, path: str | Path) -> None:
        path = os.fspath(path)
        if os.path.dirname(path) == self._inbox:
            self.tracker.note(path)

    def rescan(self) -> None:
        for path in ib.scan(self.inbox):
            self.tracker.note(path)

    def waiting(self) -> int:
        return len(self.tracker)

    def next_due(self) -> float | None:
        return self.tracker.next_due()

    def claim(self, stop: threading.Event, room: int | None = None) -> list[tuple[str, int]]:
        """Claim what is stable (at most `room` files), unless the gate is shut; returns
        [(file_id, size)]."""
        if self.gate.paused is not None or (room is not None and room <= 0):
            return []
        out: list[tuple[str, int]] = []
        ready = self.tracker.ready(room)
        for start in range(0, len(ready), CLAIM_BATCH):
            if stop.is_set():
                break
            batch = ready[start:start + CLAIM_BATCH]
            claimed, failed = ib.claim(self.v, batch)
            for path, _ in batch:
                self.tracker.taken(path)
            out += claimed
            for path, st, exc in failed:
                self.tracker.refuse(path, st)
                log.warning("a file in the inbox cannot be claimed (%s); it is left there "
                            "until it changes", exc.strerror or exc)
                log.debug("unclaimable file: %s", path)
        return out
