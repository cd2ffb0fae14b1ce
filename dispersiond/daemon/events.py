"""The messages the daemon's threads send to the main loop, one frozen dataclass each.

Watchers, the scheduler, signal handlers and the worker pools only ever put one of these
on the loop's queue; the loop dispatches on the type, so a message's fields have names
instead of positions.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..state import ObjectRow


@dataclass(frozen=True)
class PathSeen:
    """The inbox watcher saw something happen to these paths (text, as the watcher has
    them): the names of one read of its events, in one message."""

    paths: tuple[str | Path, ...]


@dataclass(frozen=True)
class Rescan:
    """Look at every file in the inbox (schedule, SIGHUP)."""


@dataclass(frozen=True)
class BackupNow:
    """The manifest backup schedule is due."""


@dataclass(frozen=True)
class VerifyNow:
    """The verify schedule is due."""


@dataclass(frozen=True)
class Wake:
    """Nothing to do but look again (a stop was asked for)."""


@dataclass(frozen=True)
class Uploaded:
    """An upload came back: `error` is None when the object landed."""

    obj: ObjectRow
    started: float  # monotonic, when the request began
    error: BaseException | None = None


@dataclass(frozen=True)
class PackSent:
    """A pack upload came back: `error` is None when the pack landed and its members'
    rows were committed."""

    store: str
    objs: tuple[ObjectRow, ...]
    started: float  # monotonic
    error: BaseException | None = None


@dataclass(frozen=True)
class Encoded:
    """An encode came back: one file's, or a batch of small files' (one event, so the
    loop books the batch at once). Each outcome is (file_id, error), the error None when
    that file is encoded."""

    outcomes: tuple[tuple[str, BaseException | None], ...]
    started: float  # monotonic
    batch: bool = False  # from the batch thread (else the pool or the early-upload one)

    @classmethod
    def one(cls, fid: str, started: float, error: BaseException | None = None) -> "Encoded":
        return cls(((fid, error),), started)

    @property
    def fids(self) -> list[str]:
        return [fid for fid, _ in self.outcomes]


@dataclass(frozen=True)
class Verified:
    """A scheduled verify finished (or gave up); `result` is what status shows."""

    result: dict[str, Any] = field(default_factory=dict)


Event = Union[PathSeen, Rescan, BackupNow, VerifyNow, Wake, Uploaded, PackSent, Encoded,
              Verified]


def drain(q: queue.SimpleQueue, timeout: float) -> list[Event]:
    """Wait up to `timeout` for one event, then take whatever else is already queued,
    so a burst is handled (and its confirmations committed) as one batch."""
    try:
        items = [q.get(timeout=max(0.0, timeout))]
    except queue.Empty:
        return []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
