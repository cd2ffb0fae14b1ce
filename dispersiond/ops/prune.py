"""The `prune` operation (docs/FORMAT.md §8.5): packs mostly made of dead members (of
files forgotten or re-keyed) are rewritten with their live ones, packs with none are
deleted, and packs nobody references are swept.

Crash-safe at every step. A new pack's name is planned before its upload; its members
are re-pointed in one transaction, and only if their rows still point where they were
copied from; an old pack goes to the trash only once a manifest backup naming the new
places has landed. A crash before the commit leaves a planned name (trashed at the next
start); after it, an old pack no row points into (deleted by the next run, once the
backup is there). Nothing is lost and nothing is referenced twice either way.

Rooms: repack.py copies live members into new packs (forget uses it too), sweep.py
lists the stores for packs nobody references; here the decisions, the release of old
packs behind the manifest backup, and the operation.
"""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from typing import Callable

from backends import StoreError

from ..errors import DispersiondError
from ..logs import event
from ..pack import PackMember, open_index, plan_repack
from ..state import PackRow
from ..archive import Progress, Archive
from .backup import backup_manifest, held
from .packing import remove_staged_packs
from .repack import TMP_PREFIX, Rewritten, rewrite
from .sweep import sweep


@dataclass(frozen=True)
class Decision:
    """What prune does with one pack, and why."""

    pack: PackRow
    action: str  # keep | repack | delete | skip
    live: int
    live_bytes: int
    dead_fraction: float
    reason: str | None = None  # skip: what stands in the way

    def as_dict(self) -> dict:
        return {"store": self.pack.store, "pack": self.pack.name, "kind": self.pack.kind,
                "size": self.pack.size, "action": self.action, "live": self.live,
                "live_bytes": self.live_bytes, "dead_fraction": round(self.dead_fraction, 4),
                **({"reason": self.reason} if self.reason else {})}


@dataclass
class PruneReport(Rewritten):
    dry_run: bool = False
    decisions: list[Decision] = field(default_factory=list)
    deleted: list[dict] = field(default_factory=list)     # store, pack: gone from the store
    waiting: list[dict] = field(default_factory=list)     # store, pack, why: deleted later
    swept: list[dict] = field(default_factory=list)       # store, name, action, reason

    def count(self, action: str) -> int:
        return sum(1 for d in self.decisions if d.action == action)

    @property
    def freed_bytes(self) -> int:
        """Stored bytes given back: old packs deleted, less the new packs written."""
        sizes = {(d.pack.store, d.pack.name): d.pack.size for d in self.decisions}
        gone = sum(sizes.get((d["store"], d["pack"]), d.get("size", 0)) for d in self.deleted)
        return gone - sum(p["size"] for p in self.new_packs)

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "packs": len(self.decisions),
                "keep": self.count("keep"), "repack": self.count("repack"),
                "delete": self.count("delete"), "skip": self.count("skip"),
                "decisions": [d.as_dict() for d in self.decisions if d.action != "keep"],
                "new_packs": self.new_packs, "deleted": self.deleted, "waiting": self.waiting,
                "failed": self.failed, "swept": self.swept, "freed_bytes": self.freed_bytes,
                "interrupted": self.interrupted}


# ------------------------------------------------------------------ deciding

def _members(tag: bytes, count: int, nbytes: int) -> list[PackMember]:
    """`count` stand-in members holding `nbytes` between them: plan_repack weighs members
    by their bytes (by count when there are none), never by who they are or where."""
    out = [PackMember(tag + b"%d" % i, 0, 0, "") for i in range(count)]
    if nbytes:
        out[:1] = [PackMember(tag + b"0", 0, nbytes, "")]
    return out


def _read_index(v: Archive, p: PackRow):
    store = v.store(p.store)
    return open_index(v.key, p.name, lambda off, n: store.get_bytes(p.name, off, n), p.size)


def decide(v: Archive, p: PackRow, usage: tuple[int, int], fraction: float,
           dry_run: bool = False) -> Decision:
    """One pack's fate, from the state alone: `usage` is (live members, their bytes) from
    the rows that point into it, the dead ones what the body holds beyond them. A
    recovered pack's body length and member count are read from its index first (and
    recorded, unless a dry run)."""
    count, live_bytes = usage
    if not count:
        return Decision(p, "delete", 0, 0, 1.0)
    if p.state != "uploaded":
        return Decision(p, "skip", count, live_bytes, 0.0,
                        f"the pack is {p.state}: run 'dispersiond repair' first")
    body_len, members = p.body_len, p.members
    if body_len is None or members is None:
        try:
            idx = _read_index(v, p)
        except (StoreError, KeyError, DispersiondError) as exc:
            return Decision(p, "skip", count, live_bytes, 0.0,
                            f"its index could not be read ({exc})")
        body_len, members = idx.body_len, len(idx.members)
        if not dry_run:
            v.db.set_pack_body(p.store, p.name, body_len, members)
    live = _members(b"live", count, live_bytes)
    dead = _members(b"dead", max(0, members - count), max(0, body_len - live_bytes))
    if not dead and body_len > live_bytes:
        dead = _members(b"dead", 1, body_len - live_bytes)
    plan = plan_repack(live + dead, {m.ref for m in live}, fraction)
    return Decision(p, plan.action, count, live_bytes, plan.dead_fraction)


def plan(v: Archive, dry_run: bool = False) -> list[Decision]:
    """A decision for every pack the state holds (two queries, not one per pack)."""
    fraction = v.cfg.pack.prune_dead_fraction
    usage = v.db.pack_usage()
    return [decide(v, p, usage.get((p.store, p.name), (0, 0)), fraction, dry_run)
            for p in v.db.packs()]


# ------------------------------------------------------------------ releasing

def _ready(v: Archive, marks: dict[tuple[str, str], int], write: bool) -> set[tuple[str, str]]:
    """The noted packs a landed manifest backup no longer needs: every one when nothing
    changed since the last backup, else those noted before it. With `write` (a command,
    alone with the state directory) a backup is written first if one is due; the daemon
    leaves backups to its main loop, whose sweep of unrecorded backups must not meet one
    in flight."""
    for attempt in (0, 1):
        with held():
            if not v.db.manifest_dirty():
                return set(marks)
            seq = v.db.manifest_seq()
        ready = {k for k, noted in marks.items() if seq > noted}
        if ready == set(marks) or not write or attempt:
            return ready
        backup_manifest(v)
    return ready


def release(v: Archive, write: bool = True) -> tuple[list[dict], list[dict]]:
    """Every pack no row points into (members forgotten, re-keyed or moved) to the trash
    and deleted, once a manifest backup that no longer names it has landed (or the
    newest backup would name bytes that are gone). Returns (deleted, waiting)."""
    empty = {(p.store, p.name): p for p in v.db.empty_packs()}
    if not empty:
        return [], []
    with held():  # the number a backup must pass: taken after the pack was found empty
        marks = v.db.mark_empty(empty, v.db.manifest_seq())
    ready = _ready(v, marks, write)
    waiting = [{"store": s, "pack": n, "why": "waiting for a manifest backup to land"}
               for s, n in sorted(set(empty) - ready)]
    if not ready:
        return [], waiting
    v.db.release_packs(ready)
    trashed = set(v.db.trashed())
    v.empty_trash()
    still = set(v.db.trashed())
    deleted = [{"store": s, "pack": n, "size": empty[s, n].size}
               for s, n in sorted(ready) if (s, n) in trashed and (s, n) not in still]
    waiting += [{"store": s, "pack": n, "why": "its store did not answer; kept in the trash"}
                for s, n in sorted(ready) if (s, n) in still]
    return deleted, waiting


def housekeeping(v: Archive, exclusive: bool = True) -> tuple[list[dict], list[dict]]:
    """What a killed prune or forget left: planned names to the trash and stale work
    folders removed (`exclusive`: this process alone uses the state directory), then every
    pack no row points into released. Returns release's lists."""
    if exclusive:
        v.db.abandon_planned()
        for p in (v.root / "work").glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
        remove_staged_packs(v)  # builds no planned name owns any more
    deleted, waiting = release(v, write=exclusive)
    v.empty_trash()
    return deleted, waiting


# ------------------------------------------------------------------ the operation

def prune(v: Archive, *, dry_run: bool = False, progress: Progress | None = None,
          on_plan: Callable[[list[Decision]], None] | None = None, now: float | None = None,
          exclusive: bool = True, swept: bool = True,
          stop: threading.Event | None = None) -> PruneReport:
    """Repack packs at `prune_dead_fraction` dead or more, delete packs without a live
    member, then sweep (`swept`). `exclusive`: this process alone uses the state
    directory (the command; the daemon runs it beside its own uploads with False).
    `on_plan` sees the decisions before any byte moves (a progress bar's total)."""
    report = PruneReport(dry_run=dry_run)
    if not dry_run:
        report.deleted, report.waiting = housekeeping(v, exclusive)
    report.decisions = plan(v, dry_run)
    if on_plan:
        on_plan(report.decisions)
    if not dry_run:
        olds = [d.pack for d in report.decisions if d.action == "repack"]
        rewrite(v, olds, progress=progress, stop=stop, report=report)
        deleted, waiting = release(v, write=exclusive)
        report.deleted += deleted
        report.waiting = waiting  # what is still waiting now
    if swept and not report.interrupted:
        report.swept, cut = sweep(v, now, dry_run, stop)
        report.interrupted |= cut
    if not dry_run:
        level = logging.WARNING if report.failed else logging.INFO
        event(level, "prune finished", packs=len(report.decisions),
              repacked=len(report.new_packs), deleted=len(report.deleted),
              waiting=len(report.waiting), failed=len(report.failed),
              swept=sum(1 for s in report.swept if s["action"] == "delete"),
              freed_bytes=report.freed_bytes)
    return report


def progress_total(decisions: list[Decision]) -> int:
    """Bytes a prune moves for its progress bar: old packs down, live members up."""
    return sum(d.pack.size + d.live_bytes for d in decisions if d.action == "repack")


__all__ = ["Decision", "PruneReport", "decide", "housekeeping", "plan", "progress_total",
           "prune", "release"]
