"""Segmented manifest checkpoints (docs/FORMAT.md §4.1): which segment holds each file,
the segments the newest checkpoint lists, the segment objects each private store holds
(and which checkpoints list them, for pruning), the files changed since the newest
checkpoint, and the objects a backup is putting before it lands."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .db import Conn, Database
from .files import chunks


@dataclass(frozen=True)
class SegmentRow:
    """One segment a checkpoint's root lists."""
    seg: int
    name: str
    digest: str
    files: int
    bytes: int


@dataclass
class SegmentLanding:
    """What a landed checkpoint (or a recover) leaves as the segment state. `moved`:
    file id -> its segment now (None: in none); with `full`, the whole membership."""
    seq: int
    key_id: str
    segments: list[SegmentRow]
    moved: dict[str, int | None]
    put: dict[str, list[str]]  # store -> segment objects it now holds
    full: bool = False
    born: dict[str, int] = field(default_factory=dict)  # name -> first listing (recover)
    died: dict[str, int] = field(default_factory=dict)  # name -> first not listing (recover)
    touched: list[str] = field(default_factory=list)  # changed after `seq` (recover)


class SegmentsMixin(Database):
    def segmented_with(self) -> str | None:
        """The key id the segment state was sealed under; None: no segment state (before
        schema 6, after a recover from whole checkpoints): the next checkpoint is full."""
        if self.get_meta("manifest_segmented") != "1":
            return None
        return self.get_meta("manifest_segment_key")

    def segment_rows(self, segs: Iterable[int] | None = None) -> list[SegmentRow]:
        """The newest checkpoint's segments (only `segs`, when given)."""
        sql = "SELECT seg, name, digest, files, bytes FROM manifest_segments"
        if segs is None:
            return [SegmentRow(*r) for r in self.query(sql + " ORDER BY seg")]
        out: list[SegmentRow] = []
        for part in chunks(sorted(set(segs))):
            marks = ", ".join("?" for _ in part)
            out += [SegmentRow(*r) for r in self.query(f"{sql} WHERE seg IN ({marks}) "
                                                        "ORDER BY seg", tuple(part))]
        return out

    def last_segment(self) -> SegmentRow | None:
        rows = self.query("SELECT seg, name, digest, files, bytes FROM manifest_segments "
                          "ORDER BY seg DESC LIMIT 1")
        return SegmentRow(*rows[0]) if rows else None

    def segments_of(self, file_ids: Iterable[str]) -> dict[str, int]:
        """file id -> segment, for those a segment holds (a batch, a few reads)."""
        out: dict[str, int] = {}
        for part in chunks(list(file_ids)):
            marks = ", ".join("?" for _ in part)
            out.update((r[0], r[1]) for r in self.query(
                f"SELECT file_id, seg FROM manifest_members WHERE file_id IN ({marks})",
                tuple(part)))
        return out

    def members_of(self, segs: Iterable[int]) -> dict[int, list[str]]:
        """segment -> the file ids it holds (ordered), for `segs`."""
        out: dict[int, list[str]] = {s: [] for s in segs}
        for part in chunks(sorted(out)):
            marks = ", ".join("?" for _ in part)
            for fid, seg in self.query(f"SELECT file_id, seg FROM manifest_members WHERE seg "
                                       f"IN ({marks}) ORDER BY seg, file_id", tuple(part)):
                out[seg].append(fid)
        return out

    def touched_since_checkpoint(self) -> list[str]:
        return [r[0] for r in self.query("SELECT file_id FROM manifest_touched ORDER BY file_id")]

    def segment_holders(self) -> dict[str, set[str]]:
        """Object name -> the stores holding it, for every segment object still listed."""
        out: dict[str, set[str]] = {}
        for store, name in self.query("SELECT store, name FROM manifest_segment_objects "
                                      "WHERE died IS NULL"):
            out.setdefault(name, set()).add(store)
        return out

    def segment_objects(self, store: str, retired_only: bool = False
                        ) -> list[tuple[str, int, int | None]]:
        """(name, born, died) of the segment objects recorded on `store`."""
        where = " AND died IS NOT NULL" if retired_only else ""
        return [(r[0], r[1], r[2]) for r in self.query(
            f"SELECT name, born, died FROM manifest_segment_objects WHERE store=?{where} "
            "ORDER BY born, name", (store,))]

    def drop_segment_objects(self, store: str, names: Iterable[str]) -> None:
        """They are in the trash (no kept checkpoint lists them)."""
        names = list(names)
        if not names:
            return
        with self.tx() as conn:
            self.trash_many([(store, n) for n in names], conn)  # TrashMixin
            conn.executemany("DELETE FROM manifest_segment_objects WHERE store=? AND name=?",
                             [(store, n) for n in names])

    # --- objects put before their backup lands
    def plan_manifest_objects(self, items: Iterable[tuple[str, str]]) -> None:
        with self.tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO manifest_planned VALUES (?, ?)", list(items))

    def stale_manifest_objects(self) -> list[tuple[str, str]]:
        """(store, name) a backup that never landed put or was putting."""
        return [(r[0], r[1]) for r in self.query(
            "SELECT store, name FROM manifest_planned ORDER BY store, name")]

    def sweep_manifest_plans(self) -> int:
        """Everything a backup that never landed put goes to the trash (its root with
        it, so recover never meets a root whose segments are gone); returns how many."""
        with self.tx() as conn:
            rows = conn.execute("SELECT store, name FROM manifest_planned").fetchall()
            items = [(r[0], r[1]) for r in rows]
            self.trash_many(items, conn)  # TrashMixin
            conn.executemany("DELETE FROM manifest_backups WHERE store=? AND name=?", items)
            conn.executemany("DELETE FROM manifest_segment_objects WHERE store=? AND name=?",
                             items)
            conn.execute("DELETE FROM manifest_planned")
        return len(items)

    # --- landing
    def touch_since_checkpoint(self, file_ids: Iterable[str], conn: Conn) -> None:
        conn.executemany("INSERT OR IGNORE INTO manifest_touched VALUES (?)",
                         [(f,) for f in file_ids])

    def land_segments(self, landing: SegmentLanding, conn: Conn) -> None:
        """Inside the transaction that records the checkpoint (or the recover)."""
        live = {s.name for s in landing.segments}
        if landing.full:
            conn.execute("DELETE FROM manifest_members")
        conn.executemany("DELETE FROM manifest_members WHERE file_id=?",
                         [(fid,) for fid, seg in landing.moved.items() if seg is None])
        conn.executemany("INSERT OR REPLACE INTO manifest_members VALUES (?, ?)",
                         [(fid, seg) for fid, seg in landing.moved.items() if seg is not None])
        conn.execute("DELETE FROM manifest_segments")
        conn.executemany("INSERT INTO manifest_segments VALUES (?, ?, ?, ?, ?)",
                         [(s.seg, s.name, s.digest, s.files, s.bytes) for s in landing.segments])
        retired = [(landing.seq, r[0], r[1]) for r in conn.execute(
            "SELECT store, name FROM manifest_segment_objects WHERE died IS NULL").fetchall()
            if r[1] not in live]
        conn.executemany("UPDATE manifest_segment_objects SET died=? WHERE store=? AND name=?",
                         retired)
        conn.executemany("INSERT OR REPLACE INTO manifest_segment_objects VALUES (?, ?, ?, ?)",
                         [(store, n, landing.born.get(n, landing.seq), landing.died.get(n))
                          for store, names in landing.put.items() for n in names])
        conn.execute("DELETE FROM manifest_touched")
        self.touch_since_checkpoint(landing.touched, conn)
        self.set_meta("manifest_segmented", "1", conn)
        self.set_meta("manifest_segment_key", landing.key_id, conn)
