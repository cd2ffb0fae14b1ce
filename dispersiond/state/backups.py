"""The manifest's bookkeeping: its sequence number, whether it changed since the last
backup, what changed (the change log the triggers fill), the chain the next backup
names, and which sealed backups each private store holds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .db import Conn, Database


@dataclass(frozen=True)
class ChainTip:
    """The newest landed backup: what the next one names as its predecessor."""
    seq: int
    digest: str
    base: int
    base_bytes: int
    delta_bytes: int
    deltas: int
    audit_seq: int


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

    def manifest_backed_up(self, seq: int, file_ids: Iterable[str],
                           tip: ChainTip | None = None, changes_upto: int | None = None,
                           landed: dict[str, str] | None = None, base: int | None = None,
                           segments=None, touched: Iterable[str] = ()) -> None:
        """Backup `seq` landed and holds `file_ids`; it is the new chain tip and the
        changes it carried (log rows up to `changes_upto`) are done: one transaction.
        `landed`: store -> the object it took (on `base`); `segments`: the segment state
        a checkpoint leaves (a SegmentLanding); `touched`: files a delta carried (their
        segments are re-sealed by the next checkpoint)."""
        with self.tx() as conn:
            self.set_manifest_seq(seq, conn)
            self.mark_manifest_clean(conn)
            self.mark_backed_up(file_ids, conn)  # FilesMixin
            if tip is not None:
                self.set_chain_tip(tip, conn)
            if changes_upto is not None:
                conn.execute("DELETE FROM manifest_changes WHERE n<=?", (changes_upto,))
            conn.executemany("INSERT OR REPLACE INTO manifest_backups (store, seq, name, base) "
                             "VALUES (?, ?, ?, ?)",
                             [(store, seq, name, seq if base is None else base)
                              for store, name in (landed or {}).items()])
            if segments is not None:
                self.land_segments(segments, conn)  # SegmentsMixin
            self.touch_since_checkpoint(touched, conn)  # SegmentsMixin
            conn.execute("DELETE FROM manifest_planned")

    # --- the change log and the chain
    def manifest_changes(self) -> tuple[list[str], int]:
        """Ids of the files changed since the last landed backup, and the log position
        they end at (what `manifest_backed_up` clears up to)."""
        rows = self.query("SELECT n, file_id FROM manifest_changes ORDER BY n")
        return [r[1] for r in rows], (rows[-1][0] if rows else 0)

    def clear_manifest_changes(self, db: Conn | None = None) -> None:
        """Every change is in a backup (after recover: the chain just loaded holds it all)."""
        with self._writing(db) as conn:
            conn.execute("DELETE FROM manifest_changes")

    def chain_tip(self) -> ChainTip | None:
        rows = self.query("SELECT seq, digest, base, base_bytes, delta_bytes, deltas, audit_seq "
                          "FROM manifest_chain WHERE id=1")
        return ChainTip(*rows[0]) if rows else None

    def set_chain_tip(self, tip: ChainTip | None, db: Conn | None = None) -> None:
        """None: no chain to continue (the next backup is a checkpoint)."""
        with self._writing(db) as conn:
            conn.execute("DELETE FROM manifest_chain")
            if tip is not None:
                conn.execute("INSERT INTO manifest_chain VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                             (tip.seq, tip.digest, tip.base, tip.base_bytes, tip.delta_bytes,
                              tip.deltas, tip.audit_seq))

    def audit_rows_after(self, seq: int) -> list[dict]:
        """Audit entries newer than `seq` (what a delta carries)."""
        return [dict(r) for r in self.query("SELECT * FROM audit WHERE seq>? ORDER BY seq",
                                            (seq,))]

    # --- the recorded backups on each private store
    def record_backup(self, store: str, seq: int, name: str, base: int | None = None) -> None:
        """`base`: the checkpoint backup `seq` builds on (itself, the default, if one)."""
        with self.tx() as conn:
            conn.execute("INSERT OR REPLACE INTO manifest_backups (store, seq, name, base) "
                         "VALUES (?, ?, ?, ?)", (store, seq, name, seq if base is None else base))

    def backup_generations(self, store: str) -> list[tuple[int, int, str]]:
        """(base, seq, name) of the backups recorded on `store`, oldest first."""
        return [(r[0], r[1], r[2]) for r in self.query(
            "SELECT COALESCE(base, seq), seq, name FROM manifest_backups WHERE store=? "
            "ORDER BY seq, name", (store,))]

    def backups(self, store: str) -> list[tuple[int, str]]:
        """(seq, name) of the backups recorded on `store`, oldest first."""
        return [(r[0], r[1]) for r in self.query(
            "SELECT seq, name FROM manifest_backups WHERE store=? ORDER BY seq, name", (store,))]

    def set_backups(self, store: str, kept: Iterable[tuple]) -> None:
        """The backups recorded on `store` are exactly `kept`: (seq, name) or
        (seq, name, base) each (one transaction)."""
        rows = [(store, k[0], k[1], k[2] if len(k) > 2 else k[0]) for k in kept]
        with self.tx() as conn:
            conn.execute("DELETE FROM manifest_backups WHERE store=?", (store,))
            conn.executemany("INSERT INTO manifest_backups (store, seq, name, base) "
                             "VALUES (?, ?, ?, ?)", rows)
