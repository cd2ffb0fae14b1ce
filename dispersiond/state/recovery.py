"""Rebuilding file, object and audit rows from manifest backups (`recover`)."""
from __future__ import annotations

import time

from .backups import ChainTip
from .db import Conn, Database
from .model import FileState, ObjectState, check_transition, file_columns


class RecoveryMixin(Database):
    def load_backup(self, files: list[tuple[dict, list[dict]]], audit: list[dict],
                    audit_head: str | None, seq: int, db: Conn | None = None) -> None:
        """(file row fields, its object rows) for each file, the audit entries, the head
        and the backup's sequence number, in one transaction. Every file is done and
        every object uploaded: the backup held them."""
        with self._writing(db) as conn:
            self.add_done_files(files, conn)
            self.restore_pack_rows(conn)  # PacksMixin
            self.load_audit_rows(conn, audit)  # AuditMixin
            if audit_head:
                self.set_audit_head(audit_head, conn)
            self.set_manifest_seq(seq, conn)  # BackupsMixin

    def add_done_files(self, files: list[tuple[dict, list[dict]]],
                       db: Conn | None = None) -> None:
        """Files that are done, with their uploaded objects, in one transaction (recover;
        the scale benchmark builds its archives with it)."""
        done = check_transition("-", None, FileState.DONE).value
        uploaded = ObjectState.UPLOADED.value
        now = time.time()
        with self._writing(db) as conn:
            for fields, objects in files:
                fields = file_columns(fields)
                conn.execute(f"INSERT OR REPLACE INTO files ({', '.join(fields)}, state, updated) "
                             f"VALUES ({', '.join('?' for _ in fields)}, ?, ?)",
                             (*fields.values(), done, now))
                self.drop_objects(fields["file_id"], conn)  # ObjectsMixin
                if objects:
                    cols = ["file_id", *objects[0], "state"]
                    conn.executemany(
                        f"INSERT INTO objects ({', '.join(cols)}) VALUES "
                        f"({', '.join('?' for _ in cols)})",
                        [(fields["file_id"], *o.values(), uploaded) for o in objects])

    def load_recovered(self, files: list[tuple[dict, list[dict]]], audit: list[dict],
                       audit_head: str | None, seq: int, tip: ChainTip | None,
                       backups: dict[str, list[tuple[int, str, int]]],
                       segments=None) -> None:
        """All of recover's writes in one transaction, so a failed recover leaves a blank
        state and the next one starts afresh: the rows, the chain to continue, the
        backups each store holds ((seq, name, base) each); the change log is empty (the
        chain holds everything) and every file is backed up. `seq`: the number the next
        backup follows (above `tip` when newer backups exist that were not loaded);
        `segments`: the loaded checkpoint's segment state (a SegmentLanding), if any."""
        with self.tx() as conn:
            self.load_backup(files, audit, audit_head, seq, conn)
            self.set_chain_tip(tip, conn)  # BackupsMixin
            for store, kept in backups.items():
                conn.execute("DELETE FROM manifest_backups WHERE store=?", (store,))
                conn.executemany("INSERT INTO manifest_backups (store, seq, name, base) "
                                 "VALUES (?, ?, ?, ?)",
                                 [(store, seq, name, base) for seq, name, base in kept])
            if segments is not None:
                self.land_segments(segments, conn)  # SegmentsMixin
            self.clear_manifest_changes(conn)
            self.mark_manifest_clean(conn)
            self.mark_backed_up(None, conn)  # FilesMixin
