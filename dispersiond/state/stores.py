"""When each store last answered, and its last error (what `status` reports)."""
from __future__ import annotations

import time

from .db import Database


class StoresMixin(Database):
    def store_ok(self, store: str) -> None:
        # Every confirmed upload reports success; one write a second per store is enough
        # (each write is an fsync, and a busy daemon confirms hundreds a second).
        now = time.time()
        if now - self._ok_at.get(store, 0.0) < 1.0:
            return
        self._ok_at[store] = now
        with self.tx() as db:
            db.execute("INSERT INTO store_status (store, last_ok) VALUES (?, ?) ON CONFLICT(store) "
                       "DO UPDATE SET last_ok=excluded.last_ok", (store, time.time()))

    def store_error(self, store: str, error: str) -> None:
        self._ok_at.pop(store, None)  # the next success is recorded at once
        with self.tx() as db:
            db.execute("INSERT INTO store_status (store, last_error, error_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(store) DO UPDATE SET last_error=excluded.last_error, "
                       "error_at=excluded.error_at", (store, error, time.time()))

    def store_status(self) -> list[dict]:
        return [dict(r) for r in self.query("SELECT * FROM store_status ORDER BY store")]
