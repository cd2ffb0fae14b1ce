"""The manifest's bookkeeping: its sequence number, whether it changed since the last
backup, and which sealed backups each private store holds."""
from __future__ import annotations

from typing import Iterable

from .db import Conn, Database


class BackupsMixin(Database):
    def manifest_dirty(self) -> bool:
        """The manifest changed since the last backup landed (or none ever did)."""
        return self.get_meta("manifest_dirty", "1") != "0"

    def mark_manifest_dirty(self, db: Conn | None = None) -> None:
        """The next backup must carry a change (a file, an audit entry, a rekey)."""
        self.set_meta("manifest_dirty", "1", db)

    def mark_manifest_clean(self, db: Conn | None = None) -> None:
        self.set_meta("manifest_dirty", "0", db)

    def manifest_seq(self) -> int:
        return int(self.get_meta("manifest_seq", "0") or 0)

    def set_manifest_seq(self, seq: int, db: Conn | None = None) -> None:
        self.set_meta("manifest_seq", str(seq), db)

    def manifest_backed_up(self, seq: int, file_ids: Iterable[str]) -> None:
        """Backup `seq` landed and holds `file_ids`: one transaction."""
        with self.tx() as conn:
            self.set_manifest_seq(seq, conn)
            self.mark_manifest_clean(conn)
            self.mark_backed_up(file_ids, conn)  # FilesMixin

    # --- the recorded backups on each private store
    def record_backup(self, store: str, seq: int, name: str) -> None:
        with self.tx() as conn:
            conn.execute("INSERT OR REPLACE INTO manifest_backups VALUES (?, ?, ?)",
                         (store, seq, name))

    def backups(self, store: str) -> list[tuple[int, str]]:
        """(seq, name) of the backups recorded on `store`, oldest first."""
        return [(r[0], r[1]) for r in self.query(
            "SELECT seq, name FROM manifest_backups WHERE store=? ORDER BY seq, name", (store,))]

    def set_backups(self, store: str, kept: Iterable[tuple[int, str]]) -> None:
        """The backups recorded on `store` are exactly `kept` (one transaction)."""
        with self.tx() as conn:
            conn.execute("DELETE FROM manifest_backups WHERE store=?", (store,))
            conn.executemany("INSERT INTO manifest_backups VALUES (?, ?, ?)",
                             [(store, seq, name) for seq, name in kept])
