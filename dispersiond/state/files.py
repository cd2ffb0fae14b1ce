"""Queries on `files`: adding, reading, and every state change (through `set_state`)."""
from __future__ import annotations

import time
from typing import Any, Iterable

from .db import Conn, Database
from ..display import as_text, is_text, raw_bytes, shown
from .model import (PROTECTED, FileRow, FileState, check_transition, file_columns,
                    sources_of)

S = FileState

#: A file that may become done: committed, every object confirmed, and held by a landed
#: manifest backup.
FINISHABLE = (f"state='{S.COMMITTED.value}' AND backed_up=1 AND NOT EXISTS (SELECT 1 FROM "
              "objects o WHERE o.file_id=files.file_id AND o.state!='uploaded')")
check_transition("-", S.COMMITTED, S.DONE)  # what FINISHABLE moves


#: Ids per `IN (...)` list: well under SQLite's limit on bound values (999 before 3.32).
CHUNK = 500


class _Refused(Exception):
    """A batch statement touched fewer rows than asked: undo it, go one by one."""


def chunks(items: list, size: int = CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _in(states: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    vals = tuple(FileState(s).value for s in states)
    return f"state IN ({', '.join('?' for _ in vals)})", vals


class FilesMixin(Database):
    def add_file(self, **fields: Any) -> None:
        """A new row; its state must be one a file may start in."""
        self.add_files([fields])

    def add_files(self, rows: list[dict[str, Any]]) -> None:
        """New rows (each as `add_file` takes it, all with the same columns), in one
        transaction: a batch is admitted with one fsync."""
        now = time.time()
        cols = [file_columns({"created": now, "updated": now, **r, "state": check_transition(
            r["file_id"], None, r["state"]).value}) for r in rows]
        if not cols:
            return
        names = ", ".join(cols[0])
        marks = ", ".join("?" for _ in cols[0])
        with self.tx() as db:
            db.executemany(f"INSERT INTO files ({names}) VALUES ({marks})",
                           [tuple(c.values()) for c in cols])

    def update_file(self, file_id: str, db: Conn | None = None, **fields: Any) -> None:
        """Change a file's other fields; its state changes only through `set_state`."""
        if "state" in fields:
            raise TypeError("update_file does not change a file's state: use set_state")
        fields = file_columns({**fields, "updated": time.time()})
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._writing(db) as conn:
            conn.execute(f"UPDATE files SET {sets} WHERE file_id=?", (*fields.values(), file_id))

    def set_sources(self, items: Iterable[tuple[str, str]]) -> None:
        """Where each of many originals now is (file_id, path), in one transaction."""
        now = time.time()
        with self.tx() as conn:
            for fid, source in items:
                fields = file_columns({"source": source, "updated": now})
                sets = ", ".join(f"{k}=?" for k in fields)
                conn.execute(f"UPDATE files SET {sets} WHERE file_id=?", (*fields.values(), fid))

    def set_state(self, file_id: str, new: FileState, db: Conn | None = None,
                  **fields: Any) -> None:
        """Move a file to `new` (and set `fields` with it) if the move is legal; raises
        IllegalTransition otherwise, writing nothing. A file with no row is left alone."""
        self.set_states([file_id], new, db, **fields)

    def set_states(self, file_ids: Iterable[str], new: FileState, db: Conn | None = None,
                   **fields: Any) -> None:
        """`set_state` for many files with the same fields, in one transaction."""
        new = FileState(new)
        fields = file_columns({**fields, "updated": fields.get("updated", time.time())})
        guard, sources = _in(sources_of(new))
        sets = ", ".join(f"{k}=?" for k in fields)
        sql = f"UPDATE files SET state=?, {sets} WHERE file_id=? AND {guard}"
        with self._writing(db) as conn:
            for fid in file_ids:
                if conn.execute(sql, (new.value, *fields.values(), fid, *sources)).rowcount:
                    continue
                row = conn.execute("SELECT state FROM files WHERE file_id=?", (fid,)).fetchone()
                if row is not None:
                    check_transition(fid, row[0], new)  # raises: the move is illegal

    def set_states_each(self, items: list[tuple[str, dict[str, Any]]], new: FileState,
                        db: Conn) -> None:
        """`set_state` for a batch whose files each have fields of their own (the same
        columns), inside the caller's transaction: every move checked first (one read),
        then one statement; an illegal one raises before anything is written."""
        new = FileState(new)
        found: dict[str, str] = {}
        for part in chunks([fid for fid, _ in items]):
            marks = ", ".join("?" for _ in part)
            found.update((r[0], r[1]) for r in db.execute(
                f"SELECT file_id, state FROM files WHERE file_id IN ({marks})", tuple(part)))
        for fid, _ in items:
            if fid in found:
                check_transition(fid, found[fid], new)  # raises: the move is illegal
        now = time.time()
        by_cols: dict[tuple[str, ...], list[tuple]] = {}
        for fid, fields in items:
            if fid in found:  # a file with no row is left alone
                cols = file_columns({**fields, "updated": fields.get("updated", now)})
                by_cols.setdefault(tuple(cols), []).append((new.value, *cols.values(), fid))
        for cols, values in by_cols.items():
            sets = ", ".join(f"{k}=?" for k in cols)
            db.executemany(f"UPDATE files SET state=?, {sets} WHERE file_id=?", values)

    def encode_again(self, file_ids: list[str]) -> list[tuple[str, str]]:
        """Encoded files whose held public fragments were lost (docs/FORMAT.md §8) back
        to claimed, in one transaction: their object rows go, and the names of those
        already uploaded (public pack members: a pack goes to the trash only once no
        row points into it) and of any planned upload go to the trash. Returns the
        (store, name) pairs given up. Only encoded files are touched."""
        with self.tx() as conn:
            fids = [fid for fid in file_ids if (r := conn.execute(
                "SELECT state FROM files WHERE file_id=?", (fid,)).fetchone())
                and r[0] == S.ENCODED.value]
            names: list[tuple[str, str]] = []
            for fid in fids:
                names += [(r[0], r[1]) for r in conn.execute(
                    "SELECT store, name FROM objects WHERE file_id=? AND state!=?",
                    (fid, "pending"))]
                names += [(r[0], r[1]) for r in conn.execute(
                    "SELECT store, name FROM planned WHERE file_id=?", (fid,))]
                conn.execute("DELETE FROM objects WHERE file_id=?", (fid,))
                conn.execute("DELETE FROM planned WHERE file_id=?", (fid,))
            self.trash_many(list(dict.fromkeys(names)), conn)  # TrashMixin
            self.set_states(fids, S.CLAIMED, conn, error=None)
        return names

    def claimed_many(self, moved: list[tuple[str, str]], dropped: list[str],
                     updated: float) -> None:
        """One transaction: claims whose rename landed are claimed (with their new source),
        the others' rows go."""
        guard, sources = _in(sources_of(S.CLAIMED))
        cols = [(fid, file_columns({"source": source, "updated": updated}))
                for fid, source in moved]
        try:
            with self.tx() as conn:  # one statement for the batch
                if cols:
                    sets = ", ".join(f"{k}=?" for k in cols[0][1])
                    cur = conn.executemany(
                        f"UPDATE files SET state=?, {sets} WHERE file_id=? AND {guard}",
                        [(S.CLAIMED.value, *c.values(), fid, *sources) for fid, c in cols])
                    if cur.rowcount != len(cols):
                        raise _Refused  # undone; looked at one by one below
                self.drop_claiming(dropped, conn)
            return
        except _Refused:
            pass
        with self.tx() as conn:  # a row gone is left alone, an illegal move raises
            for fid, source in moved:
                self.set_state(fid, S.CLAIMED, conn, source=source, updated=updated)
            self.drop_claiming(dropped, conn)

    def add_claims(self, rows: list[tuple[str, str, int, float, str, str]],
                   now: float) -> None:
        """Inbox files being claimed: (file_id, name, size, mtime, scheme, source)."""
        state = check_transition("-", None, S.CLAIMING).value
        keys = ("file_id", "name", "size", "mtime", "scheme", "source")
        cols = [file_columns({**dict(zip(keys, r)), "state": state, "created": now,
                              "updated": now}) for r in rows]
        if not cols:
            return
        names = ", ".join(cols[0])
        marks = ", ".join("?" for _ in cols[0])
        with self.tx() as conn:
            conn.executemany(f"INSERT INTO files ({names}) VALUES ({marks})",
                             [tuple(c.values()) for c in cols])

    def drop_claiming(self, file_ids: Iterable[str], db: Conn | None = None) -> None:
        """Forget claims that did not happen (only rows still 'claiming')."""
        with self._writing(db) as conn:
            conn.executemany("DELETE FROM files WHERE file_id=? AND state=?",
                             [(fid, S.CLAIMING.value) for fid in file_ids])

    def delete_file(self, file_id: str, db: Conn | None = None) -> None:
        """The file's row and its objects' rows (forget)."""
        with self._writing(db) as conn:
            conn.execute("DELETE FROM objects WHERE file_id=?", (file_id,))
            conn.execute("DELETE FROM files WHERE file_id=?", (file_id,))

    def note_upload_failure(self, file_id: str, retry_at: float, error: str) -> None:
        """One more failed attempt, and when to try again."""
        with self.tx() as conn:
            conn.execute("UPDATE files SET attempts=attempts+1, next_try=?, error=?, updated=? "
                         "WHERE file_id=?", (retry_at, as_text(error), time.time(), file_id))

    def finish_many(self, file_ids: Iterable[str]) -> list[str]:
        """committed -> done for each of `file_ids` that is finishable, checked inside one
        transaction; returns the ids now done."""
        now = time.time()
        with self.tx() as conn:
            return [fid for fid in file_ids if conn.execute(
                f"UPDATE files SET state=?, updated=? WHERE file_id=? AND {FINISHABLE}",
                (S.DONE.value, now, fid)).rowcount]

    def mark_backed_up(self, file_ids: Iterable[str] | None = None,
                       db: Conn | None = None) -> None:
        """A landed manifest backup holds these files (all of them: None)."""
        with self._writing(db) as conn:
            if file_ids is None:
                conn.execute("UPDATE files SET backed_up=1")
            else:
                conn.executemany("UPDATE files SET backed_up=1 WHERE file_id=?",
                                 [(fid,) for fid in file_ids])

    # --- reads
    def file(self, file_id: str) -> FileRow | None:
        rows = self.query("SELECT * FROM files WHERE file_id=?", (file_id,))
        return FileRow.from_db(rows[0]) if rows else None

    def files_by_id(self, file_ids: Iterable[str]) -> dict[str, FileRow]:
        """Many files by id in a few reads (a batch): id -> row for those that exist, in
        the order asked."""
        ids = list(file_ids)
        found: dict[str, FileRow] = {}
        for part in chunks(ids):
            marks = ", ".join("?" for _ in part)
            for r in self.query(f"SELECT * FROM files WHERE file_id IN ({marks})", tuple(part)):
                found[r["file_id"]] = FileRow.from_db(r)
        return {fid: found[fid] for fid in ids if fid in found}

    def files(self, where: str = "1", args: tuple = ()) -> list[FileRow]:
        return [FileRow.from_db(r) for r in
                self.query(f"SELECT * FROM files WHERE {where} ORDER BY created, file_id", args)]

    def files_in(self, *states: FileState) -> list[FileRow]:
        """Files in any of `states`, oldest first."""
        return self.files(*_in(states))

    def protected_files(self) -> list[FileRow]:
        """Files a manifest backup holds (committed or done)."""
        return self.files_in(*PROTECTED)

    def protected_since(self, since: float | None = None) -> list[FileRow]:
        """Protected files (committed or done) created at or after `since` (all: None),
        oldest first: what a bulk restore picks from."""
        guard, args = _in(PROTECTED)
        if since is None:
            return self.files(guard, args)
        return self.files(f"{guard} AND created>=?", (*args, since))

    def file_ids_in(self, *states: FileState) -> list[str]:
        """Ids of the files in any of `states`, by id."""
        guard, args = _in(states)
        return [r[0] for r in self.query(f"SELECT file_id FROM files WHERE {guard} "
                                         "ORDER BY file_id", args)]

    def ids_in(self, *states: FileState) -> list[str]:
        """Ids of the files in any of `states`, oldest first (`files_in` without the rows:
        a checkpoint of the whole archive lists 10^6 of them)."""
        guard, args = _in(states)
        return [r[0] for r in self.query(f"SELECT file_id FROM files WHERE {guard} "
                                         "ORDER BY created, file_id", args)]

    def states_of(self, file_ids: Iterable[str]) -> dict[str, FileState]:
        """file id -> state, for those of `file_ids` with a row (a batch, a few reads)."""
        out: dict[str, FileState] = {}
        for part in chunks(list(file_ids)):
            marks = ", ".join("?" for _ in part)
            out.update((r[0], FileState(r[1])) for r in self.query(
                f"SELECT file_id, state FROM files WHERE file_id IN ({marks})", tuple(part)))
        return out

    def claimed_sizes(self) -> list[tuple[str, int]]:
        """(file_id, size) of the files waiting to be encoded, in arrival order."""
        return [(r[0], r[1]) for r in self.query(
            "SELECT file_id, size FROM files WHERE state=? ORDER BY created",
            (S.CLAIMED.value,))]

    def finishable_ids(self) -> list[str]:
        """Files that may become done (see FINISHABLE), in arrival order."""
        return [r[0] for r in self.query(f"SELECT file_id FROM files WHERE {FINISHABLE} "
                                         "ORDER BY created")]

    def file_states(self) -> dict[str, FileState]:
        return {r[0]: FileState(r[1]) for r in self.query("SELECT file_id, state FROM files")}

    def has_files(self) -> bool:
        return bool(self.query("SELECT 1 FROM files LIMIT 1"))

    def find(self, ref: str) -> list[FileRow]:
        """Files matching an id, an id prefix (>= 6 hex digits) or an original name: as
        its bytes (argv keeps undecodable bytes), as stored, or as `ls` shows it."""
        ref = ref.strip()
        if not is_text(ref):  # undecodable bytes: only a name can match
            return self.files("name_raw=?", (raw_bytes(ref),))
        by_id = self.files("file_id=?", (ref.lower(),))
        if by_id:
            return by_id
        out = []
        if len(ref) >= 6 and all(c in "0123456789abcdefABCDEF" for c in ref):
            out = self.files("file_id LIKE ?", (ref.lower() + "%",))
        if out:
            return out
        by_name = self.files("name=? AND name_raw IS NULL", (ref,))
        if by_name:
            return by_name
        # As `ls` showed it: the escaped text of an undecodable or control-character name.
        return self.files("name=? AND name_raw IS NOT NULL", (ref,)) or [
            f for f in self.files() if shown(f.name) == ref]

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.query("SELECT state, COUNT(*) FROM files GROUP BY state")}

    def oldest_pending_since(self) -> float | None:
        """When the oldest file not yet done (nor quarantined) arrived: the metrics' age."""
        pending = [s.value for s in FileState if s not in (FileState.DONE, FileState.FAILED)]
        rows = self.query(f"SELECT MIN(created) FROM files WHERE state IN "
                          f"({', '.join('?' for _ in pending)})", tuple(pending))
        return rows[0][0] if rows else None
