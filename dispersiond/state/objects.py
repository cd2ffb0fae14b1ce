"""Queries on `objects`: where each fragment of a file lives and whether it landed."""
from __future__ import annotations

import time
from typing import Any, Iterable

from .db import Conn, Database
from .files import chunks
from .model import FileState, ObjectRow, ObjectState, row_dict

O = ObjectState
#: Objects that repair rebuilds.
BROKEN = (O.MISSING.value, O.CORRUPT.value, O.PENDING.value)


def _filters(role: str | None, states: Iterable[str] | None,
             not_state: str | None) -> tuple[str, tuple]:
    parts: list[str] = []
    args: list[Any] = []
    if role is not None:
        parts.append("role=?")
        args.append(role)
    if states is not None:
        vals = [str(s) for s in states]
        parts.append(f"state IN ({', '.join('?' for _ in vals)})")
        args += vals
    if not_state is not None:
        parts.append("state!=?")
        args.append(str(not_state))
    return " AND ".join(parts) or "1", tuple(args)


class ObjectsMixin(Database):
    def add_objects(self, db: Conn, rows: list[dict[str, Any]]) -> None:
        """Object rows in the order given (their ids follow it), one statement for each
        run of rows with the same columns (a batch has one)."""
        runs: list[tuple[tuple[str, ...], list[tuple]]] = []
        for r in rows:
            cols = tuple(r)
            if not runs or runs[-1][0] != cols:
                runs.append((cols, []))
            runs[-1][1].append(tuple(r.values()))
        for cols, values in runs:
            db.executemany(f"INSERT INTO objects ({', '.join(cols)}) VALUES "
                           f"({', '.join('?' for _ in cols)})", values)

    def objects(self, file_id: str | None = None, where: str = "1", args: tuple = (), *,
                role: str | None = None, states: Iterable[str] | None = None,
                not_state: str | None = None) -> list[ObjectRow]:
        """A file's objects (every file's: None), by role, shard and id; narrowed by
        `role`, `states`, `not_state` (or, for inspection, a `where` clause)."""
        extra, extra_args = _filters(role, states, not_state)
        where, args = f"({where}) AND {extra}", (*args, *extra_args)
        if file_id is not None:
            where, args = f"file_id=? AND {where}", (file_id, *args)
        return [ObjectRow(**row_dict(r)) for r in self.query(
            "SELECT *, (SELECT digest_alg FROM files f WHERE f.file_id=objects.file_id) AS "
            f"digest_alg FROM objects WHERE {where} ORDER BY role, shard, id", args)]

    def objects_of(self, file_ids: Iterable[str], *,
                   states: Iterable[str] | None = None) -> list[ObjectRow]:
        """The objects of many files (a batch), in a few reads; narrowed by `states`."""
        extra, extra_args = _filters(None, states, None)
        out: list[ObjectRow] = []
        for part in chunks(list(file_ids)):
            marks = ", ".join("?" for _ in part)
            out += [ObjectRow(**row_dict(r)) for r in self.query(
                "SELECT *, (SELECT digest_alg FROM files f WHERE f.file_id=objects.file_id) AS "
                f"digest_alg FROM objects WHERE file_id IN ({marks}) AND {extra} "
                "ORDER BY file_id, role, shard, id", (*part, *extra_args))]
        return out

    def upload_counts(self, file_ids: Iterable[str]) -> dict[str, tuple[int, int, int, int]]:
        """Per file with objects: (public uploaded, private uploaded, uploaded, all), what
        a commit decides on, counted by the database rather than read row by row."""
        up = O.UPLOADED.value
        out: dict[str, tuple[int, int, int, int]] = {}
        for part in chunks(list(file_ids)):
            marks = ", ".join("?" for _ in part)
            for r in self.query(
                    "SELECT file_id, SUM(role='public' AND state=?), SUM(role='private' AND "
                    f"state=?), SUM(state=?), COUNT(*) FROM objects WHERE file_id IN ({marks}) "
                    "GROUP BY file_id", (up, up, up, *part)):
                out[r[0]] = (r[1], r[2], r[3], r[4])
        return out

    def objects_by_file(self) -> dict[str, list[ObjectRow]]:
        """Every object, grouped by file (in `objects`' order): one query for a checkpoint."""
        out: dict[str, list[ObjectRow]] = {}
        for r in self.query("SELECT o.*, f.digest_alg FROM objects o JOIN files f ON "
                            "f.file_id=o.file_id ORDER BY o.file_id, o.role, o.shard, o.id"):
            out.setdefault(r["file_id"], []).append(ObjectRow(**row_dict(r)))
        return out

    def objects_grouped(self, file_ids: Iterable[str]) -> dict[str, list[ObjectRow]]:
        """`objects_of`, grouped by file: a bulk restore's plan."""
        out: dict[str, list[ObjectRow]] = {}
        for o in self.objects_of(file_ids):
            out.setdefault(o.file_id, []).append(o)
        return out

    def upload_queue(self) -> list[ObjectRow]:
        """Pending objects of files being uploaded, oldest file first."""
        return [ObjectRow(**row_dict(r)) for r in self.query(
            "SELECT o.*, f.digest_alg FROM objects o JOIN files f ON f.file_id=o.file_id WHERE "
            "o.state=? AND f.state IN (?, ?) ORDER BY f.created, o.id",
            (O.PENDING.value, FileState.ENCODED.value, FileState.COMMITTED.value))]

    def broken_file_ids(self) -> set[str]:
        """Files with an object missing, corrupt or never uploaded."""
        return {r[0] for r in self.query(
            "SELECT DISTINCT file_id FROM objects WHERE state IN (?, ?, ?)", BROKEN)}

    def set_objects_uploaded(self, object_ids: list[int]) -> None:
        """Confirm many uploads in one transaction (one fsync, not one each)."""
        now = time.time()
        with self.tx() as db:
            db.executemany("UPDATE objects SET state=?, checked=? WHERE id=?",
                           [(O.UPLOADED.value, now, i) for i in object_ids])

    def set_object_state(self, object_id: int, state: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE objects SET state=?, checked=? WHERE id=?",
                       (str(state), time.time(), object_id))

    def replace_object(self, obj: ObjectRow, name: str, digest: str,
                       object_size: int | None = None, checked: float | None = None) -> None:
        """A fresh copy of `obj` landed under `name`: the row points at it, the old name goes
        to the trash (one transaction)."""
        sets, args = "name=?, digest=?, state=?", [name, digest, O.UPLOADED.value]
        if object_size is not None:
            sets, args = sets + ", object_size=?", [*args, object_size]
        if checked is not None:
            sets, args = sets + ", checked=?", [*args, checked]
        with self.tx() as conn:
            conn.execute(f"UPDATE objects SET {sets} WHERE id=?", (*args, obj.id))
            self.trash(obj.store, obj.name, conn)

    def drop_pending_objects_of(self, file_ids: Iterable[str], db: Conn) -> None:
        """`drop_objects(pending_only=True)` for a batch, in one statement."""
        db.executemany("DELETE FROM objects WHERE file_id=? AND state=?",
                       [(fid, O.PENDING.value) for fid in file_ids])

    def drop_objects(self, file_id: str, db: Conn, pending_only: bool = False) -> None:
        """A file's object rows (only those never uploaded: `pending_only`)."""
        if pending_only:
            db.execute("DELETE FROM objects WHERE file_id=? AND state=?",
                       (file_id, O.PENDING.value))
        else:
            db.execute("DELETE FROM objects WHERE file_id=?", (file_id,))
