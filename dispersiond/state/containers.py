"""Queries on `containers`: the device's own copy of each small file's private container.

A small file's container is a couple of KiB. As a file of its own it cost an inode, a
create and an fsync per record, on a device that keeps millions of them for years; here
it lands in the same transaction that records its file encoded, and a batch's are made
durable by that transaction's one WAL sync. A larger file's container stays a file
(`prf/<file_id>.prf`, read as a stream). `Archive.container` reads either.
"""
from __future__ import annotations

from typing import Iterable

from .db import Conn, Database


class ContainersMixin(Database):
    def put_containers(self, conn: Conn, items: Iterable[tuple[str, bytes]]) -> None:
        """Inside the caller's transaction: each file's container, replacing any older."""
        conn.executemany("INSERT OR REPLACE INTO containers (file_id, data) VALUES (?, ?)",
                         items)

    def container(self, file_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM containers WHERE file_id=?",
                                   (file_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def has_container(self, file_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM containers WHERE file_id=?",
                                    (file_id,)).fetchone() is not None

    def drop_containers(self, file_ids: Iterable[str], conn: Conn | None = None) -> None:
        """The containers kept for these files (overwritten where they lay: the database
        runs with secure_delete)."""
        with self._writing(conn) as db:
            db.executemany("DELETE FROM containers WHERE file_id=?", [(f,) for f in file_ids])

    def purge_freed(self) -> None:
        """Fold the write-ahead log into the database and truncate it: a deleted
        container's bytes stay in the log's frames until then (forget calls this)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
