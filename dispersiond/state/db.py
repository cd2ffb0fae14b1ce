"""The connection: one per process, one lock, immediate transactions, the meta table.

Every pipeline step is a transaction here, so a crash or SIGKILL at any instant
leaves a state from which the next start resumes: each file row says which step
it reached, each object row whether its upload was confirmed.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import DispersiondError
from ..fsutil import create_private, restrict
from .model import PROTECTED
from .schema import (ENTRY_COLUMNS, OBJECT_COLUMNS, POST_MIGRATION, SCHEMA, SCHEMA_VERSION,
                     migrate, triggers)

Conn = sqlite3.Connection


class Database:
    """A thread-safe handle on the state database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private(path)  # SQLite gives its -wal and -shm files the database's mode
        self.path = path
        self._lock = threading.RLock()
        self._ok_at: dict[str, float] = {}  # store -> when store_ok last wrote (this handle)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        for part in ("", "-wal", "-shm"):  # made by an older build, or under another umask
            restrict(path.with_name(path.name + part))
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # What is deleted is overwritten, not left in free space: the table `containers`
        # holds private containers, and forget must leave none of a file's behind.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)  # creates what is missing; leaves old tables as they are
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            version = None if row is None else int(row[0])
            if version is not None and version > SCHEMA_VERSION:
                raise DispersiondError(f"state database {path} was written by a newer "
                                       f"dispersiond (schema {version}, this build reads up "
                                       f"to {SCHEMA_VERSION}); upgrade before using it")
            if version is not None and version < SCHEMA_VERSION:
                migrate(db, version)
            if version != SCHEMA_VERSION:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                           (str(SCHEMA_VERSION),))
        self._db.executescript(POST_MIGRATION)
        self._db.executescript(triggers(tuple(s.value for s in PROTECTED), ENTRY_COLUMNS,
                                        OBJECT_COLUMNS))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        """One immediate transaction: all of it lands, or none of it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _writing(self, conn: Conn | None) -> Iterator[Conn]:
        """The caller's open transaction, or a new one of its own."""
        if conn is not None:
            yield conn
            return
        with self.tx() as c:
            yield c

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """Any read (tests and one-off inspection; the package uses named methods)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def integrity_check(self) -> str:
        return self.query("PRAGMA integrity_check")[0][0]

    # --- meta: single values (schema, sequence numbers, flags, the daemon's status)
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str, conn: Conn | None = None) -> None:
        with self._writing(conn) as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                       "value=excluded.value", (key, value))

    def delete_meta(self, *keys: str) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM meta WHERE key=?", [(k,) for k in keys])

    def set_daemon_status(self, doc_json: str) -> None:
        """What `status` shows of a running daemon (its own process writes it)."""
        self.set_meta("daemon", doc_json)
