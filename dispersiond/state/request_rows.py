"""Rows of the consent requests table: received, listed, decided once."""
from __future__ import annotations

import sqlite3

from .db import Database


class RequestsMixin(Database):
    def add_request(self, rid: str, nonce: str, recipient: str, received: float,
                    body: str) -> bool:
        """Store a verified request; False if its id or nonce was seen before (a replay)."""
        with self.tx() as db:
            if db.execute("SELECT 1 FROM requests WHERE id=? OR nonce=?",
                          (rid, nonce)).fetchone():
                return False
            db.execute("INSERT INTO requests VALUES (?, ?, ?, ?, ?, 'pending', NULL, NULL)",
                       (rid, nonce, recipient, received, body))
        return True

    def request_rows(self, states: tuple[str, ...] = ("pending",)) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self.query(f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY received",
                          states)

    def request_row(self, rid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM requests WHERE id=?", (rid.strip().lower(),))
        return rows[0] if rows else None

    def decide_request(self, rid: str, state: str, decided: float, outcome: str) -> bool:
        """Approve or deny a pending request; False if it was already decided."""
        with self.tx() as db:
            cur = db.execute("UPDATE requests SET state=?, decided=?, outcome=? "
                             "WHERE id=? AND state='pending'", (state, decided, outcome, rid))
        return cur.rowcount == 1
