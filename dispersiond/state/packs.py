"""Queries on `packs`: the pack objects we stored, and the members that point into them.

A pack is deleted only when no object row points into it any more: `trash_many` (the one
way any operation gives up an object's name) consults `unreferenced_packs` first, so a
caller that releases one member's name can never delete the other members' bytes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from .db import Conn, Database
from .model import ObjectRow, ObjectState, PackRow, row_dict

#: `planned.file_id` of a pack name recorded before its upload (a pack has no one file).
PACK_PLAN = ""


@dataclass(frozen=True)
class PlacedMember:
    """Where one pending object landed inside a pack."""

    object_id: int
    offset: int
    length: int
    digest: str


class PacksMixin(Database):
    def plan_pack(self, store: str, name: str) -> None:
        """Record a pack's name before its upload: a crash before the commit leaves it
        planned, and start-up sends it to the trash (`abandon_planned`)."""
        with self.tx() as conn:
            conn.execute("INSERT INTO planned VALUES (?, ?, ?, ?)",
                         (store, name, PACK_PLAN, time.time()))

    def abandon_pack(self, store: str, name: str) -> None:
        """A pack's upload failed (it may have landed in part): its name to the trash."""
        with self.tx() as conn:
            conn.execute("DELETE FROM planned WHERE store=? AND name=?", (store, name))
            self.trash_many([(store, name)], conn)  # TrashMixin

    def add_packs(self, conn: Conn, packs: Iterable[PackRow]) -> None:
        """Rows of packs that landed (in the caller's transaction, with their members)."""
        conn.executemany("INSERT INTO packs (store, name, kind, size, digest, digest_alg, "
                         "body_len, members, created, state, checked) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [(p.store, p.name, p.kind, p.size, p.digest, p.digest_alg,
                           p.body_len, p.members, p.created, p.state, p.checked)
                          for p in packs])

    def commit_pack(self, pack: PackRow, placed: Iterable[PlacedMember],
                    release: Iterable[tuple[str, str]] = ()) -> None:
        """The pack landed: its row, and every member re-pointed at it, in one transaction
        (the members' old planned names were never uploaded). `release`: the packs the
        members came from (repair, rotation), trashed in the same transaction once no
        member points into them."""
        now = time.time()
        with self.tx() as conn:
            self.add_packs(conn, [pack])
            conn.executemany(
                "UPDATE objects SET name=?, offset=?, length=?, object_size=?, digest=?, "
                "pack_digest=?, state=?, checked=? WHERE id=?",
                [(pack.name, m.offset, m.length, pack.size, m.digest, pack.digest,
                  ObjectState.UPLOADED.value, now, m.object_id) for m in placed])
            conn.execute("DELETE FROM planned WHERE store=? AND name=?", (pack.store, pack.name))
            self.trash_many(list(release), conn)  # TrashMixin

    def pack(self, store: str, name: str) -> PackRow | None:
        rows = self.query("SELECT * FROM packs WHERE store=? AND name=?", (store, name))
        return PackRow(**dict(rows[0])) if rows else None

    def packs(self, store: str | None = None, kind: str | None = None) -> list[PackRow]:
        where, args = ["1"], []
        if store is not None:
            where.append("store=?")
            args.append(store)
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        return [PackRow(**dict(r)) for r in self.query(
            f"SELECT * FROM packs WHERE {' AND '.join(where)} ORDER BY store, created, name",
            tuple(args))]

    def pack_members(self, store: str, name: str) -> list[ObjectRow]:
        """The object rows that point into one pack, in pack order."""
        return [ObjectRow(**row_dict(r)) for r in self.query(
            "SELECT o.*, f.digest_alg FROM objects o JOIN files f ON f.file_id=o.file_id "
            "WHERE o.store=? AND o.name=? AND o.pack_digest IS NOT NULL ORDER BY o.offset, o.id",
            (store, name))]

    def set_pack_state(self, store: str, name: str, state: str, conn: Conn | None = None) -> None:
        """A pack found missing or damaged (or good again): the pack and every member in it."""
        now = time.time()
        with self._writing(conn) as db:
            db.execute("UPDATE packs SET state=?, checked=? WHERE store=? AND name=?",
                       (str(state), now, store, name))
            db.execute("UPDATE objects SET state=?, checked=? WHERE store=? AND name=? AND "
                       "pack_digest IS NOT NULL", (str(state), now, store, name))

    def record_pack_check(self, store: str, name: str, state: str,
                          members: dict[int, str]) -> None:
        """One verify of a pack: its own state and each member's (object id -> state), in
        one transaction (not one per member)."""
        now = time.time()
        with self.tx() as conn:
            conn.execute("UPDATE packs SET state=?, checked=? WHERE store=? AND name=?",
                         (str(state), now, store, name))
            conn.executemany("UPDATE objects SET state=?, checked=? WHERE id=? AND store=? AND "
                             "name=? AND pack_digest IS NOT NULL",
                             [(str(s), now, i, store, name) for i, s in members.items()])

    def set_pack_body(self, store: str, name: str, body_len: int, members: int) -> None:
        """What a pack's index says (a recovered pack row does not know it until read)."""
        with self.tx() as conn:
            conn.execute("UPDATE packs SET body_len=?, members=? WHERE store=? AND name=?",
                         (body_len, members, store, name))

    def live_bytes(self) -> dict[tuple[str, str], int]:
        """(store, pack) -> member bytes still referenced, for every pack (prune)."""
        out = {(p.store, p.name): 0 for p in self.packs()}
        for r in self.query("SELECT store, name, SUM(length) FROM objects WHERE pack_digest "
                            "IS NOT NULL GROUP BY store, name"):
            out[(r[0], r[1])] = r[2] or 0
        return out

    def unreferenced_packs(self, items: Iterable[tuple[str, str]],
                           conn: Conn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Split names being given up into (deletable, kept): a pack some object row still
        points into is kept; a pack no row points into loses its `packs` row and is
        deletable, like any standalone object."""
        free, kept = [], []
        for store, name in items:
            if conn.execute("SELECT 1 FROM packs WHERE store=? AND name=?",
                            (store, name)).fetchone() is None:
                free.append((store, name))
            elif conn.execute("SELECT 1 FROM objects WHERE store=? AND name=? AND pack_digest "
                              "IS NOT NULL LIMIT 1", (store, name)).fetchone():
                kept.append((store, name))
            else:
                conn.execute("DELETE FROM packs WHERE store=? AND name=?", (store, name))
                free.append((store, name))
        return free, kept

    def restore_pack_rows(self, conn: Conn) -> int:
        """Pack rows rebuilt from the members' rows (after `recover`, which has only the
        manifest: the body length and member count are read from the index when needed)."""
        now = time.time()
        cur = conn.execute(
            "INSERT OR IGNORE INTO packs (store, name, kind, size, digest, digest_alg, "
            "body_len, members, created, state, checked) SELECT o.store, o.name, o.role, "
            "MAX(o.object_size), o.pack_digest, MAX(f.digest_alg), NULL, NULL, ?, ?, NULL "
            "FROM objects o JOIN files f ON f.file_id=o.file_id WHERE o.pack_digest IS NOT NULL "
            "GROUP BY o.store, o.name", (now, ObjectState.UPLOADED.value))
        return cur.rowcount
