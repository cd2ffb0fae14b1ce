"""Objects to delete when their store answers, and names planned for uploads that begin
before their file is encoded (so a crash never leaves an object nobody knows of)."""
from __future__ import annotations

import time
from typing import Iterable

from .db import Conn, Database
from .files import chunks


class TrashMixin(Database):
    def trash(self, store: str, name: str, db: Conn | None = None) -> None:
        """Delete this object later, whatever happens now (one clock: time.time())."""
        self.trash_many([(store, name)], db)

    def trash_many(self, items: Iterable[tuple[str, str]], db: Conn | None = None) -> None:
        """A pack among `items` is trashed only once no member points into it (call this
        after the rows that gave the names up changed, in the same transaction)."""
        now = time.time()
        with self._writing(db) as conn:
            free, _ = self.unreferenced_packs(list(items), conn)  # PacksMixin
            conn.executemany("INSERT OR IGNORE INTO trash VALUES (?, ?, ?)",
                             [(store, name, now) for store, name in free])

    def trashed(self) -> list[tuple[str, str]]:
        """(store, name) of every object waiting to be deleted."""
        return [(r[0], r[1]) for r in self.query("SELECT store, name FROM trash")]

    def untrash(self, store: str, name: str) -> None:
        """The object is gone from its store: nothing more to do for it."""
        with self.tx() as conn:
            conn.execute("DELETE FROM trash WHERE store=? AND name=?", (store, name))

    # --- planned names of early uploads
    def plan_uploads(self, file_id: str, items: Iterable[tuple[str, str]]) -> None:
        """Record (store, name) before uploading under it, in one transaction."""
        with self.tx() as conn:
            conn.executemany("INSERT INTO planned VALUES (?, ?, ?, ?)",
                             [(store, name, file_id, time.time()) for store, name in items])

    def abandon_planned(self, file_id: str | None = None) -> int:
        """Planned names (of `file_id`, or every file's) to the trash; returns how many."""
        where, args = ("file_id=?", (file_id,)) if file_id else ("1", ())
        if not self.query(f"SELECT 1 FROM planned WHERE {where} LIMIT 1", args):
            return 0  # the usual case: no write transaction (and no lock) for every encode
        with self.tx() as conn:
            rows = conn.execute(f"SELECT store, name FROM planned WHERE {where}", args).fetchall()
            self.trash_many([(r[0], r[1]) for r in rows], conn)
            conn.execute(f"DELETE FROM planned WHERE {where}", args)
        return len(rows)

    def abandon_planned_of(self, file_ids: Iterable[str]) -> int:
        """`abandon_planned` for each of many files (a batch): one read when none has any."""
        found = 0
        for part in chunks(list(file_ids)):
            marks = ", ".join("?" for _ in part)
            if self.query(f"SELECT 1 FROM planned WHERE file_id IN ({marks}) LIMIT 1",
                          tuple(part)):
                found += sum(self.abandon_planned(fid) for fid in part)
        return found

    def drop_planned(self, file_id: str, db: Conn) -> None:
        """The planned names became object rows (the encode committed)."""
        db.execute("DELETE FROM planned WHERE file_id=?", (file_id,))

    def drop_planned_of(self, file_ids: Iterable[str], db: Conn) -> None:
        """`drop_planned` for a batch, in one statement."""
        db.executemany("DELETE FROM planned WHERE file_id=?", [(fid,) for fid in file_ids])
