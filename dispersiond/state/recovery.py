"""Rebuilding file, object and audit rows from a manifest backup (`recover`)."""
from __future__ import annotations

import time

from .db import Database
from .model import FileState, ObjectState, check_transition, file_columns


class RecoveryMixin(Database):
    def load_backup(self, files: list[tuple[dict, list[dict]]], audit: list[dict],
                    audit_head: str | None, seq: int) -> None:
        """(file row fields, its object rows) for each file, the audit entries, the head
        and the backup's sequence number, in one transaction. Every file is done and
        every object uploaded: the backup held them."""
        done = check_transition("-", None, FileState.DONE).value
        with self.tx() as conn:
            for fields, objects in files:
                fields = file_columns(fields)
                conn.execute(f"INSERT OR REPLACE INTO files ({', '.join(fields)}, state, updated) "
                             f"VALUES ({', '.join('?' for _ in fields)}, ?, ?)",
                             (*fields.values(), done, time.time()))
                self.drop_objects(fields["file_id"], conn)  # ObjectsMixin
                self.add_objects(conn, [{"file_id": fields["file_id"], **o,
                                         "state": ObjectState.UPLOADED.value} for o in objects])
            self.load_audit_rows(conn, audit)  # AuditMixin
            if audit_head:
                self.set_audit_head(audit_head, conn)
            self.set_manifest_seq(seq, conn)  # BackupsMixin
