"""Rows of the hash-chained audit log (the chain itself is made in dispersiond.audit)."""
from __future__ import annotations

import sqlite3

from .db import Conn, Database


class AuditMixin(Database):
    def audit_rows(self, db: Conn | None = None) -> list[sqlite3.Row]:
        """Every entry, in order (read inside `db`'s transaction when given)."""
        sql = "SELECT * FROM audit ORDER BY seq"
        return db.execute(sql).fetchall() if db is not None else self.query(sql)

    def audit_last_seq(self) -> int:
        """The newest entry's seq (0 for an empty log)."""
        return self.query("SELECT COALESCE(MAX(seq), 0) FROM audit")[0][0]

    def audit_count(self) -> int:
        return self.query("SELECT COUNT(*) FROM audit")[0][0]

    def audit_tail(self, db: Conn) -> tuple[int, str] | None:
        """(seq, hash) of the newest entry, inside the caller's transaction."""
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def add_audit_row(self, db: Conn, seq: int, ts: float, event: str, file_id: str | None,
                      detail: str, prev: str, hash: str) -> None:
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (seq, ts, event, file_id, detail, prev, hash))

    def load_audit_rows(self, db: Conn, rows: list[dict]) -> None:
        """Entries from a manifest backup; those already here are kept as they are."""
        db.executemany("INSERT OR IGNORE INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(a["seq"], a["ts"], a["event"], a["file_id"], a["detail"], a["prev"],
                         a["hash"]) for a in rows])

    def rechain_row(self, db: Conn, seq: int, prev: str, hash: str) -> None:
        db.execute("UPDATE audit SET prev=?, hash=? WHERE seq=?", (prev, hash, seq))

    def set_audit_head(self, head: str, db: Conn | None = None) -> None:
        """'seq:hash' of the newest entry, kept apart so cutting the log's end shows."""
        self.set_meta("audit_head", head, db)

    def audit_head(self) -> str | None:
        return self.get_meta("audit_head")
