"""The local state database (SQLite, WAL): files, where their objects live, audit log.

Every pipeline step is a transaction here, so a crash or SIGKILL at any instant
leaves a state from which the next start resumes: each file row says which step
it reached, each object row whether its upload was confirmed.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import digests

SCHEMA_VERSION = 2  # 2: digests named for their algorithm (files.digest_alg)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    file_id     TEXT PRIMARY KEY,           -- 32 hex digits, random
    name        TEXT NOT NULL,              -- original file name: never logged, never uploaded in clear
    size        INTEGER NOT NULL,
    digest      TEXT,                       -- of the original bytes (by digest_alg)
    mtime       REAL,
    scheme      TEXT NOT NULL,
    head_len    INTEGER NOT NULL DEFAULT 0,
    chunk_log2  INTEGER,
    puf_len     INTEGER,
    prf_len     INTEGER,
    prf_digest  TEXT,                       -- of the private container
    digest_alg  TEXT,                       -- blake3 | sha256: every digest of this file
    key_id      TEXT,
    public_mode TEXT,                       -- replicate | erasure
    k           INTEGER,
    n           INTEGER,
    block       INTEGER,                    -- erasure block size
    state       TEXT NOT NULL,              -- see STATES
    source      TEXT,                       -- claimed original (daemon) or given path (put)
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try    REAL,
    error       TEXT,
    backed_up   INTEGER NOT NULL DEFAULT 0  -- a manifest backup with this file has landed
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE TABLE IF NOT EXISTS objects (
    id          INTEGER PRIMARY KEY,
    file_id     TEXT NOT NULL REFERENCES files(file_id) ON DELETE CASCADE,
    role        TEXT NOT NULL,              -- public | private
    shard       INTEGER,                    -- erasure shard number; NULL otherwise
    store       TEXT NOT NULL,
    name        TEXT NOT NULL,
    offset      INTEGER NOT NULL DEFAULT 0, -- where the fragment starts inside the object
    length      INTEGER NOT NULL,           -- fragment bytes inside the object
    object_size INTEGER NOT NULL,           -- stored bytes, padding included
    digest      TEXT NOT NULL,              -- of the stored object (by its file's digest_alg)
    state       TEXT NOT NULL,              -- pending | uploaded | missing | corrupt
    checked     REAL,
    UNIQUE (store, name)
);
CREATE INDEX IF NOT EXISTS objects_file ON objects(file_id);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    event   TEXT NOT NULL,
    file_id TEXT,
    detail  TEXT NOT NULL,
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS planned (        -- names of uploads begun before their file is encoded
    store   TEXT NOT NULL,
    name    TEXT NOT NULL,
    file_id TEXT NOT NULL,
    since   REAL NOT NULL,
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS trash (          -- objects to delete when their store answers
    store TEXT NOT NULL,
    name  TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS store_status (
    store      TEXT PRIMARY KEY,
    last_ok    REAL,
    last_error TEXT,
    error_at   REAL
);
"""

# claiming: the daemon recorded an inbox file and is moving it into claimed/ (start-up
# finishes or undoes it); claimed: original taken, nothing written; encoded: fragments on
# local disk, objects planned; committed: restorable (manifest written), some uploads may
# still be pending; done: every object confirmed, after-policy applied; failed: quarantined.
STATES = ("claiming", "claimed", "encoded", "committed", "done", "failed")


@dataclass
class FileRow:
    file_id: str
    name: str
    size: int
    digest: str | None
    mtime: float | None
    scheme: str
    head_len: int
    chunk_log2: int | None
    puf_len: int | None
    prf_len: int | None
    prf_digest: str | None
    digest_alg: str | None
    key_id: str | None
    public_mode: str | None
    k: int | None
    n: int | None
    block: int | None
    state: str
    source: str | None
    created: float
    updated: float
    attempts: int
    next_try: float | None
    error: str | None
    backed_up: int


@dataclass
class ObjectRow:
    id: int
    file_id: str
    role: str
    shard: int | None
    store: str
    name: str
    offset: int
    length: int
    object_size: int
    digest: str
    state: str
    checked: float | None
    digest_alg: str | None  # its file's: what `digest` is made with


class StateDB:
    """A thread-safe handle on the state database (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._ok_at: dict[str, float] = {}  # store -> when store_ok last wrote (this handle)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)  # creates what is missing; leaves old tables as they are
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                from .errors import DispersiondError

                raise DispersiondError(f"state database {path} was written by a newer "
                                       "dispersiond; upgrade before using it")
            if row is not None and int(row[0]) == 1:
                _migrate_v1(db)
            if row is None or int(row[0]) != SCHEMA_VERSION:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                           (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: all of it lands, or none of it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                       "value=excluded.value", (key, value))

    def delete_meta(self, *keys: str) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM meta WHERE key=?", [(k,) for k in keys])

    # --- files
    def add_file(self, **fields: Any) -> None:
        now = time.time()
        fields.setdefault("created", now)
        fields.setdefault("updated", now)
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.tx() as db:
            db.execute(f"INSERT INTO files ({cols}) VALUES ({marks})", tuple(fields.values()))

    def update_file(self, file_id: str, db: sqlite3.Connection | None = None,
                    **fields: Any) -> None:
        fields["updated"] = time.time()
        sets = ", ".join(f"{k}=?" for k in fields)
        sql = f"UPDATE files SET {sets} WHERE file_id=?"
        if db is not None:
            db.execute(sql, (*fields.values(), file_id))
            return
        with self.tx() as conn:
            conn.execute(sql, (*fields.values(), file_id))

    def file(self, file_id: str) -> FileRow | None:
        rows = self.query("SELECT * FROM files WHERE file_id=?", (file_id,))
        return FileRow(**dict(rows[0])) if rows else None

    def files(self, where: str = "1", args: tuple = ()) -> list[FileRow]:
        return [FileRow(**dict(r)) for r in
                self.query(f"SELECT * FROM files WHERE {where} ORDER BY created, file_id", args)]

    def find(self, ref: str) -> list[FileRow]:
        """Files matching an id, an id prefix (>= 6 hex digits) or an original name."""
        ref = ref.strip()
        by_id = self.files("file_id=?", (ref.lower(),))
        if by_id:
            return by_id
        out = []
        if len(ref) >= 6 and all(c in "0123456789abcdefABCDEF" for c in ref):
            out = self.files("file_id LIKE ?", (ref.lower() + "%",))
        return out or self.files("name=?", (ref,))

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.query("SELECT state, COUNT(*) FROM files GROUP BY state")}

    def oldest_pending_since(self) -> float | None:
        """When the oldest file not yet done (nor quarantined) arrived: the metrics' age."""
        rows = self.query("SELECT MIN(created) FROM files WHERE state IN "
                          "('claiming', 'claimed', 'encoded', 'committed')")
        return rows[0][0] if rows else None

    # --- objects
    def add_objects(self, db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            cols = ", ".join(r)
            db.execute(f"INSERT INTO objects ({cols}) VALUES ({', '.join('?' for _ in r)})",
                       tuple(r.values()))

    def objects(self, file_id: str | None = None, where: str = "1",
                args: tuple = ()) -> list[ObjectRow]:
        if file_id is not None:
            where, args = f"file_id=? AND ({where})", (file_id, *args)
        return [ObjectRow(**dict(r)) for r in self.query(
            "SELECT *, (SELECT digest_alg FROM files f WHERE f.file_id=objects.file_id) AS "
            f"digest_alg FROM objects WHERE {where} ORDER BY role, shard, id", args)]

    def set_objects_uploaded(self, object_ids: list[int]) -> None:
        """Confirm many uploads in one transaction (one fsync, not one each)."""
        now = time.time()
        with self.tx() as db:
            db.executemany("UPDATE objects SET state='uploaded', checked=? WHERE id=?",
                           [(now, i) for i in object_ids])

    def set_object_state(self, object_id: int, state: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE objects SET state=?, checked=? WHERE id=?",
                       (state, time.time(), object_id))

    # --- stores
    def store_ok(self, store: str) -> None:
        # Every confirmed upload reports success; one write a second per store is enough
        # (each write is an fsync, and a busy daemon confirms hundreds a second).
        now = time.time()
        if now - self._ok_at.get(store, 0.0) < 1.0:
            return
        self._ok_at[store] = now
        with self.tx() as db:
            db.execute("INSERT INTO store_status (store, last_ok) VALUES (?, ?) ON CONFLICT(store) "
                       "DO UPDATE SET last_ok=excluded.last_ok", (store, time.time()))

    def store_error(self, store: str, error: str) -> None:
        self._ok_at.pop(store, None)  # the next success is recorded at once
        with self.tx() as db:
            db.execute("INSERT INTO store_status (store, last_error, error_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(store) DO UPDATE SET last_error=excluded.last_error, "
                       "error_at=excluded.error_at", (store, error, time.time()))

    def store_status(self) -> list[dict]:
        return [dict(r) for r in self.query("SELECT * FROM store_status ORDER BY store")]

    def integrity_check(self) -> str:
        return self.query("PRAGMA integrity_check")[0][0]


def peek(db_path: Path, sql: str, timeout: float = 5.0) -> int:
    """One number from another process's state database, read-only (it is neither
    created nor written); 0 while it does not exist yet or is being created."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=timeout)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 named every digest sha256 (it was the only algorithm)."""
    db.execute("ALTER TABLE files RENAME COLUMN sha256 TO digest")
    db.execute("ALTER TABLE files RENAME COLUMN prf_sha256 TO prf_digest")
    db.execute("ALTER TABLE files ADD COLUMN digest_alg TEXT")
    db.execute("UPDATE files SET digest_alg=? WHERE digest IS NOT NULL OR prf_digest IS NOT NULL",
               (digests.LEGACY,))
    db.execute("ALTER TABLE objects RENAME COLUMN sha256 TO digest")


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): what hashes and backups are made of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
