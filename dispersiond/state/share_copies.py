"""Queries on `share_copies`: standalone copies of packed members that a share's links
point at (docs/FORMAT.md §6.6). Each is recorded before its upload, with the time its
link has expired; it goes to the trash then, or at once when its file is re-keyed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .db import Conn, Database


@dataclass(frozen=True)
class ShareCopy:
    store: str
    name: str
    file_id: str
    expires: float  # unix seconds: once past, the copy is deleted


class ShareCopiesMixin(Database):
    def plan_share_copy(self, store: str, name: str, file_id: str, expires: float) -> None:
        """Record a copy's name before it is uploaded: a crash after this leaves a row
        that expiry cleans up, never an object nobody knows of."""
        with self.tx() as conn:
            conn.execute("INSERT INTO share_copies VALUES (?, ?, ?, ?)",
                         (store, name, file_id, expires))

    def share_copies(self, file_id: str | None = None) -> list[ShareCopy]:
        where, args = ("file_id=?", (file_id,)) if file_id is not None else ("1", ())
        return [ShareCopy(*r) for r in self.query(
            f"SELECT store, name, file_id, expires FROM share_copies WHERE {where} "
            "ORDER BY expires, store, name", args)]

    def drop_share_copies(self, items: Iterable[tuple[str, str]]) -> None:
        """Copies no bundle will use (an upload failed, or the bundle was not written):
        to the trash now."""
        items = list(items)
        if not items:
            return
        with self.tx() as conn:
            self._trash_copies(conn, "store=? AND name=?", items)

    def trash_share_copies(self, file_id: str, conn: Conn | None = None) -> int:
        """Every copy of one file to the trash (rekey: its earlier bundles are revoked)."""
        with self._writing(conn) as db:
            return self._trash_copies(db, "file_id=?", [(file_id,)])

    def trash_expired_copies(self, now: float) -> int:
        """Copies whose links have expired, to the trash; returns how many."""
        if not self.query("SELECT 1 FROM share_copies WHERE expires<=? LIMIT 1", (now,)):
            return 0  # the usual case: no write transaction
        with self.tx() as conn:
            return self._trash_copies(conn, "expires<=?", [(now,)])

    def _trash_copies(self, conn: Conn, where: str, args: list[tuple]) -> int:
        names: list[tuple[str, str]] = []
        for a in args:
            names += [(r[0], r[1]) for r in conn.execute(
                f"SELECT store, name FROM share_copies WHERE {where}", a)]
            conn.execute(f"DELETE FROM share_copies WHERE {where}", a)
        self.trash_many(names, conn)  # TrashMixin
        return len(names)
