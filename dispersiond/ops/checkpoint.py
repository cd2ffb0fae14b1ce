"""Segmented checkpoints (docs/FORMAT.md §4.1): which segments the next checkpoint must
re-seal (those holding a file changed since the last one, and the last segment when new
files arrive), what that costs, and the sealed segments themselves. Only dirty segments
are read and serialized, one at a time (each is shipped before the next is built: a
burst's checkpoint of 30 segments held 6 MB of them at once); the root lists
N / SEGMENT_FILES of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import manifest
from ..archive import Archive
from ..codec import se2
from ..state import PROTECTED, SegmentLanding, SegmentRow

#: Takes one newly sealed segment (its object name and bytes) to the private stores.
Ship = Callable[[str, bytes], None]


@dataclass
class CheckpointPlan:
    segments: list[SegmentRow]  # every segment the root lists, by index
    landing: SegmentLanding
    sealed: int = 0  # segments sealed (and shipped) for this checkpoint
    sealed_bytes: int = 0

    def refs(self) -> list[dict]:
        return [{"index": r.seg, "name": r.name, "digest": r.digest, "files": r.files}
                for r in self.segments]


def key_id(v: Archive) -> str:
    return se2.key_id(v.key).hex()


def _dirty_files(v: Archive, changed: list[str]) -> list[str]:
    return sorted(set(v.db.touched_since_checkpoint()) | set(changed))


#: Sealed bytes per entry assumed before any segment exists.
ENTRY_BYTES = 300


def entry_bytes(v: Archive) -> float:
    """Sealed bytes an entry takes, as the newest segment shows."""
    return _per_entry(v.db.last_segment())


def _per_entry(last: SegmentRow | None) -> float:
    return last.bytes / max(1, last.files) if last else ENTRY_BYTES


def next_cost(v: Archive, base_bytes: int, changed: list[str]) -> int:
    """Sealed bytes the next checkpoint would upload: the root (about the last one's
    size) and every segment it would re-seal; the whole archive while there is no
    segment state to build on (the next checkpoint is then full)."""
    if v.db.segmented_with() != key_id(v):
        return base_bytes
    dirty = _dirty_files(v, changed)
    seg_of = v.db.segments_of(dirty)
    segs = set(seg_of.values())
    last = v.db.last_segment()
    new = len(dirty) - len(seg_of)
    if new and last is not None:
        segs.add(last.seg)
    return base_bytes + sum(r.bytes for r in v.db.segment_rows(segs)) + int(new * _per_entry(last))


def plan(v: Archive, seq: int, changed: list[str], ship: Ship) -> CheckpointPlan:
    """Re-seal what changed since the last checkpoint (everything when there is no
    segment state under this key: after an upgrade, a recover from a whole checkpoint,
    or rotate-key), and any segment a private store lacks; each sealed segment goes to
    `ship` as soon as it is sealed."""
    kid = key_id(v)
    full = v.db.segmented_with() != kid
    groups: dict[int, list[str]]
    moved: dict[str, int | None] = {}
    S = manifest.SEGMENT_FILES
    if full:
        fids = v.db.ids_in(*PROTECTED)
        groups = {i // S: fids[i:i + S] for i in range(0, len(fids), S)}
        moved = {fid: i // S for i, fid in enumerate(fids)}
        kept: dict[int, SegmentRow] = {}
    else:
        groups, moved, kept = _dirty_groups(v, _dirty_files(v, changed))
    sealed = sealed_bytes = 0
    for index, fids in sorted(groups.items()):
        files = manifest.entries(v.db, fids)
        if not files:
            continue  # every file of it forgotten: the root no longer lists it
        blob = manifest.seal(v.key, manifest.segment(seq, index, files))
        name = manifest.segment_name(blob)
        kept[index] = SegmentRow(index, name, manifest.blob_digest(blob), len(files), len(blob))
        del files
        ship(name, blob)
        sealed, sealed_bytes = sealed + 1, sealed_bytes + len(blob)
    rows = [kept[i] for i in sorted(kept)]
    return CheckpointPlan(rows, SegmentLanding(seq, kid, rows, moved, {}, full), sealed,
                          sealed_bytes)


def _dirty_groups(v: Archive, dirty: list[str]
                  ) -> tuple[dict[int, list[str]], dict[str, int | None], dict[int, SegmentRow]]:
    """The member lists of the segments to re-seal, the membership changes, and the
    segments kept as they are."""
    S = manifest.SEGMENT_FILES
    rows = {r.seg: r for r in v.db.segment_rows()}
    stores = set(v.cfg.private.stores)
    holders = v.db.segment_holders()
    seg_of = v.db.segments_of(dirty)
    protected = {fid for fid, state in v.db.states_of(dirty).items() if state in PROTECTED}
    segs = {seg_of[f] for f in dirty if f in seg_of}
    segs |= {i for i, r in rows.items() if not stores <= holders.get(r.name, set())}
    groups = v.db.members_of(segs)
    moved: dict[str, int | None] = {}
    for fid in dirty:
        if fid in seg_of and fid not in protected:
            moved[fid] = None
            groups[seg_of[fid]].remove(fid)
    new = [fid for fid in dirty if fid in protected and fid not in seg_of]
    open_seg = max(rows, default=-1)
    if open_seg < 0 or rows[open_seg].files >= S:
        open_seg += 1
    for fid in new:
        if open_seg not in groups:
            groups.update(v.db.members_of([open_seg]))
        if len(groups[open_seg]) >= S:
            open_seg += 1
            groups[open_seg] = []
        groups[open_seg].append(fid)
        moved[fid] = open_seg
    kept = {i: r for i, r in rows.items() if i not in groups}
    return groups, moved, kept
