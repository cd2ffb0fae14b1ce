"""Crash-safety records of a rekey (its planned new objects, the old ones to retire) and
of a passphrase rotation (the new salt until the config file carries it)."""
from __future__ import annotations

from typing import Iterable

from .db import Conn, Database

Names = list[tuple[str, str]]  # (store, name)


class RekeyMixin(Database):
    def plan_rekey(self, file_id: str, items: Iterable[tuple[str, str]]) -> None:
        """Names of a rekey's new objects, recorded before any is uploaded."""
        with self.tx() as conn:
            conn.execute("DELETE FROM rekey_plan WHERE file_id=?", (file_id,))
            conn.executemany("INSERT INTO rekey_plan VALUES (?, ?, ?)",
                             [(file_id, store, name) for store, name in items])

    def rekey_plan(self, file_id: str) -> Names | None:
        """The planned names of an uncommitted rekey of `file_id`; None if there is none."""
        rows = self.query("SELECT store, name FROM rekey_plan WHERE file_id=? "
                          "ORDER BY store, name", (file_id,))
        return [(r[0], r[1]) for r in rows] or None

    def drop_rekey_plan(self, file_id: str, db: Conn) -> None:
        db.execute("DELETE FROM rekey_plan WHERE file_id=?", (file_id,))

    def abandon_rekey_plan(self, file_id: str) -> bool:
        """The planned objects of a rekey that never committed, to the trash; False if
        there were none."""
        names = self.rekey_plan(file_id)
        if names is None:
            return False
        with self.tx() as conn:
            self.trash_many(names, conn)  # TrashMixin
            self.drop_rekey_plan(file_id, conn)
        return True

    def retire(self, file_id: str, items: Iterable[tuple[str, str]], db: Conn) -> None:
        """Old objects of a re-keyed file: deleted once a backup names the new ones."""
        db.executemany("INSERT OR IGNORE INTO rekey_retire VALUES (?, ?, ?)",
                       [(file_id, store, name) for store, name in items])

    def retirements(self) -> dict[str, Names]:
        """file_id -> old objects waiting to be retired."""
        out: dict[str, Names] = {}
        for r in self.query("SELECT file_id, store, name FROM rekey_retire "
                            "ORDER BY file_id, store, name"):
            out.setdefault(r[0], []).append((r[1], r[2]))
        return out

    def trash_retired(self, retirements: dict[str, Names]) -> None:
        """Their manifest backup landed: the old objects to the trash, in one transaction."""
        with self.tx() as conn:
            for fid, names in retirements.items():
                self.trash_many(names, conn)
                conn.execute("DELETE FROM rekey_retire WHERE file_id=?", (fid,))

    # --- passphrase rotation under way
    def rotation(self) -> tuple[str | None, str | None]:
        """(new salt, id of the new key) of a rotation under way; (None, None) if none."""
        rows = self.query("SELECT salt, key_id FROM key_rotation WHERE id=1")
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    def set_rotation_salt(self, salt: str) -> None:
        with self.tx() as conn:
            conn.execute("INSERT INTO key_rotation (id, salt) VALUES (1, ?) ON CONFLICT(id) "
                         "DO UPDATE SET salt=excluded.salt", (salt,))

    def set_rotation_key_id(self, key_id: str) -> None:
        with self.tx() as conn:
            conn.execute("INSERT INTO key_rotation (id, key_id) VALUES (1, ?) ON CONFLICT(id) "
                         "DO UPDATE SET key_id=excluded.key_id", (key_id,))

    def end_rotation(self) -> None:
        with self.tx() as conn:
            conn.execute("DELETE FROM key_rotation")
