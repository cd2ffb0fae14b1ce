"""What prune, forget's pack rewrite and the sweep need of the state: how much of each
pack is still referenced, moving members into a new pack (only those still where the
plan saw them), packs nobody points into any more, every name the state knows on a
store, and when a name it does not know was first seen there."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from .db import Database
from .model import ObjectState, PackRow


@dataclass(frozen=True)
class MovedMember:
    """One member copied from an old pack into a new one: the row moves only if it still
    points where the copy was taken from (`old_name`, `old_offset`, `digest`)."""

    object_id: int
    old_name: str
    old_offset: int
    offset: int
    length: int
    digest: str


class PruneMixin(Database):
    def pack_usage(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(store, pack) -> (members still referenced, their bytes), for every pack that
        has any: one query, however many packs."""
        return {(r[0], r[1]): (r[2], r[3] or 0) for r in self.query(
            "SELECT store, name, COUNT(*), SUM(length) FROM objects WHERE pack_digest IS "
            "NOT NULL GROUP BY store, name")}

    def empty_packs(self) -> list[PackRow]:
        """Packs no object row points into (their members were forgotten, re-keyed or
        moved): what prune deletes once a manifest backup no longer needs them."""
        return [PackRow(**dict(r)) for r in self.query(
            "SELECT * FROM packs p WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE "
            "o.store=p.store AND o.name=p.name AND o.pack_digest IS NOT NULL) "
            "ORDER BY store, created, name")]

    def move_members(self, pack: PackRow, moved: Iterable[MovedMember]) -> int:
        """A repacked pack landed: its row, and each member re-pointed at it if its row
        still points where the copy came from, in one transaction (which also drops the
        planned name and marks the manifest dirty). Returns how many rows moved; a new
        pack none moved into goes to the trash at once."""
        now = time.time()
        n = 0
        with self.tx() as conn:
            conn.execute("INSERT INTO packs (store, name, kind, size, digest, digest_alg, "
                         "body_len, members, created, state, checked) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (pack.store, pack.name, pack.kind, pack.size, pack.digest,
                          pack.digest_alg, pack.body_len, pack.members, pack.created,
                          pack.state, pack.checked))
            for m in moved:
                n += conn.execute(
                    "UPDATE objects SET name=?, offset=?, length=?, object_size=?, "
                    "pack_digest=?, state=?, checked=? WHERE id=? AND store=? AND name=? AND "
                    "offset=? AND length=? AND digest=? AND pack_digest IS NOT NULL",
                    (pack.name, m.offset, m.length, pack.size, pack.digest,
                     ObjectState.UPLOADED.value, now, m.object_id, pack.store, m.old_name,
                     m.old_offset, m.length, m.digest)).rowcount
            conn.execute("DELETE FROM planned WHERE store=? AND name=?", (pack.store, pack.name))
            if not n:
                self.trash_many([(pack.store, pack.name)], conn)  # TrashMixin
            self.mark_manifest_dirty(conn)  # BackupsMixin
        return n

    def mark_empty(self, items: Iterable[tuple[str, str]], seq: int) -> dict[tuple[str, str], int]:
        """Note packs found without members at manifest sequence `seq` (a pack noted
        earlier keeps its number); returns (store, pack) -> the number each was noted at."""
        items = sorted(set(items))
        with self.tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO pack_release VALUES (?, ?, ?)",
                             [(s, n, seq) for s, n in items])
            return {(s, n): conn.execute("SELECT seq FROM pack_release WHERE store=? AND "
                                         "name=?", (s, n)).fetchone()[0] for s, n in items}

    def release_packs(self, items: Iterable[tuple[str, str]]) -> None:
        """Packs without members to the trash (trash_many keeps any a row points into
        again) and their notes dropped, with the notes of packs gone, in one transaction."""
        items = sorted(set(items))
        with self.tx() as conn:
            self.trash_many(items, conn)  # TrashMixin
            conn.executemany("DELETE FROM pack_release WHERE store=? AND name=?", items)
            conn.execute("DELETE FROM pack_release WHERE NOT EXISTS (SELECT 1 FROM packs p "
                         "WHERE p.store=pack_release.store AND p.name=pack_release.name)")

    def known_names(self, store: str) -> set[str]:
        """Every name on `store` the state accounts for: objects and packs, the trash,
        planned uploads, manifest backups, a rekey's planned and retired objects."""
        tables = ("objects", "packs", "trash", "planned", "manifest_backups", "rekey_plan",
                  "rekey_retire", "manifest_segment_objects", "manifest_planned")
        sql = " UNION ".join(f"SELECT name FROM {t} WHERE store=?" for t in tables)
        return {r[0] for r in self.query(sql, (store,) * len(tables))}

    def note_unknown(self, store: str, names: Iterable[str], now: float | None = None
                     ) -> dict[str, float]:
        """The names on `store` the state does not know, as listed now: each keeps the time
        it was first seen (stores' listings carry no time the sweep could trust); a name
        no longer among them is dropped. Returns name -> first seen."""
        now = time.time() if now is None else now
        names = set(names)
        with self.tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO sweep_seen VALUES (?, ?, ?)",
                             [(store, n, now) for n in sorted(names)])
            rows = conn.execute("SELECT name, first_seen FROM sweep_seen WHERE store=?",
                                (store,)).fetchall()
            conn.executemany("DELETE FROM sweep_seen WHERE store=? AND name=?",
                             [(store, r[0]) for r in rows if r[0] not in names])
        return {r[0]: r[1] for r in rows if r[0] in names}

    def sweep_out(self, store: str, name: str) -> None:
        """An unreferenced pack of ours, past its grace: to the trash, its note dropped."""
        with self.tx() as conn:
            self.trash_many([(store, name)], conn)  # TrashMixin
            conn.execute("DELETE FROM sweep_seen WHERE store=? AND name=?", (store, name))

    def seen_unknown(self, store: str) -> dict[str, float]:
        """name -> first seen, as recorded by the last sweep of `store` (dry runs)."""
        return {r[0]: r[1] for r in self.query(
            "SELECT name, first_seen FROM sweep_seen WHERE store=?", (store,))}
