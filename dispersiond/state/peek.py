"""Read-only looks at another process's state database (it is neither created nor
written): for `status`, benchmarks and tests watching a running daemon."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import FileState, ObjectState


def peek(db_path: Path, sql: str, timeout: float = 5.0) -> int:
    """One number from another process's state database, read-only; 0 while it does
    not exist yet or is being created."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=timeout)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def peek_counts(db_path: Path, timeout: float = 5.0) -> dict[str, int]:
    """Files per state (every state named, 0 when none; all 0 while the database does
    not exist yet or is being created)."""
    out = {s.value: 0 for s in FileState}
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True,
                                     timeout=timeout)) as db:
            for state, n in db.execute("SELECT state, COUNT(*) FROM files GROUP BY state"):
                out[state] = n
    except sqlite3.Error:
        pass
    return out


def peek_done(db_path: Path, timeout: float = 5.0) -> int:
    """How many files are done."""
    return peek_counts(db_path, timeout)[FileState.DONE.value]


def peek_done_times(db_path: Path, timeout: float = 5.0) -> dict[str, float]:
    """When each done file became done (its row's last change, time.time()), by original
    name: a benchmark's per-record latency. Empty while the database is not there."""
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True,
                                     timeout=timeout)) as db:
            return dict(db.execute("SELECT name, updated FROM files WHERE state=?",
                                   (FileState.DONE.value,)).fetchall())
    except sqlite3.Error:
        return {}


def peek_planned(db_path: Path, timeout: float = 5.0) -> int:
    """How many upload names are planned (early uploads under way)."""
    return peek(db_path, "SELECT COUNT(*) FROM planned", timeout)


@dataclass
class StatusRows:
    """What `status` reads, in one read-only pass."""

    counts: dict[str, int]
    oldest_pending: dict[str, Any] | None  # file_id, state, created, error, next_try
    meta: dict[str, str]  # daemon, manifest_seq, manifest_dirty (those present)
    stores: list[dict[str, Any]]  # store_status rows
    pending_objects: dict[str, int]  # store -> objects waiting for it


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
        db.execute("SELECT 1 FROM files LIMIT 1")
    except sqlite3.Error:
        db = sqlite3.connect(path, timeout=timeout)  # no -shm yet: a plain connection makes it
    db.row_factory = sqlite3.Row
    return db


def read_status(db_path: Path, pending: tuple[str, ...], timeout: float = 10.0
                ) -> StatusRows | None:
    """None while the database is being created; sqlite3.Error if it cannot be read."""
    with closing(_connect(db_path, timeout)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"files", "objects", "meta", "store_status"} <= tables:
            return None  # being created by a daemon starting right now
        counts = {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM files "
                                                  "GROUP BY state")}
        marks = ",".join("?" for _ in pending)
        row = db.execute(f"SELECT file_id, state, created, error, next_try FROM files WHERE "
                         f"state IN ({marks}) ORDER BY created LIMIT 1",
                         tuple(str(s) for s in pending)).fetchone()
        meta = {r[0]: r[1] for r in db.execute("SELECT key, value FROM meta WHERE key IN "
                                               "('daemon', 'manifest_seq', 'manifest_dirty')")}
        stores = [dict(r) for r in db.execute("SELECT * FROM store_status")]
        waiting = {r[0]: r[1] for r in db.execute(
            "SELECT store, COUNT(*) FROM objects WHERE state=? GROUP BY store",
            (ObjectState.PENDING.value,))}
    return StatusRows(counts, None if row is None else dict(row), meta, stores, waiting)
