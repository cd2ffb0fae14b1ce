"""The `prune` operation (docs/FORMAT.md §8.5): packs mostly made of dead members (of
files forgotten or re-keyed) are rewritten with their live ones, packs with none are
deleted, and packs nobody references are swept.

Crash-safe at every step. A new pack's name is planned before its upload; its members
are re-pointed in one transaction, and only if their rows still point where they were
copied from; an old pack goes to the trash only once a manifest backup naming the new
places has landed. A crash before the commit leaves a planned name (trashed at the next
start); after it, an old pack no row points into (deleted by the next run, once the
backup is there). Nothing is lost and nothing is referenced twice either way.

The sweep lists every store: a name the state does not know, still there `sweep_grace`
after the sweep first saw it, is deleted only if it opens as a pack under our master
key and no file the state holds needs it. Anything else is left and reported.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from backends import NotFound, StoreError

from .. import digests, manifest
from ..errors import DispersiondError
from ..logs import event
from ..pack import PackMember, extract, open_index, plan_repack
from ..placement import new_object_name
from ..state import MovedMember, ObjectRow, PackRow
from ..archive import Progress, Archive
from .backup import backup_manifest, held
from .packing import PackJob, build, plan_packs
from .upload import Throttle, Upload, send

_OBJECT_NAME = re.compile(r"[0-9a-f]{32}")
#: Work folders of a repack (downloaded old packs), removed at the next exclusive run.
_TMP_PREFIX = ".prune-"


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
class PruneReport:
    dry_run: bool = False
    decisions: list[Decision] = field(default_factory=list)
    new_packs: list[dict] = field(default_factory=list)   # store, pack, members, size
    deleted: list[dict] = field(default_factory=list)     # store, pack: gone from the store
    waiting: list[dict] = field(default_factory=list)     # store, pack, why: deleted later
    failed: list[dict] = field(default_factory=list)      # store, packs, error
    swept: list[dict] = field(default_factory=list)       # store, name, action, reason
    interrupted: bool = False

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

def _dead_members(live: list[PackMember], body_len: int, count: int) -> list[PackMember]:
    """The dead members as the state sees them: the gaps between live members (their
    bytes are exact), topped up with empty ones to the pack's member count."""
    dead, at = [], 0
    for m in sorted(live, key=lambda m: m.offset):
        if m.offset > at:
            dead.append(PackMember(b"dead%d" % len(dead), at, m.offset - at, ""))
        at = max(at, m.end)
    if body_len > at:
        dead.append(PackMember(b"dead%d" % len(dead), at, body_len - at, ""))
    while len(live) + len(dead) < count:
        dead.append(PackMember(b"dead%d" % len(dead), body_len, 0, ""))
    return dead


def _read_index(v: Archive, p: PackRow):
    store = v.store(p.store)
    return open_index(v.key, p.name, lambda off, n: store.get_bytes(p.name, off, n), p.size)


def decide(v: Archive, p: PackRow, rows: list[ObjectRow], fraction: float,
           dry_run: bool = False) -> Decision:
    """One pack's fate: plan_repack over its live members (from the state) and its dead
    ones (what the body holds beyond them); a recovered pack's body length is read from
    its index first (and recorded, unless a dry run)."""
    live = [PackMember(bytes.fromhex(o.file_id), o.offset, o.length, o.digest) for o in rows]
    live_bytes = sum(m.length for m in live)
    if not live:
        return Decision(p, "delete", 0, 0, 1.0)
    if p.state != "uploaded":
        return Decision(p, "skip", len(live), live_bytes, 0.0,
                        f"the pack is {p.state}: run 'dispersiond repair' first")
    body_len, count = p.body_len, p.members
    if body_len is None or count is None:
        try:
            idx = _read_index(v, p)
        except (StoreError, KeyError, DispersiondError) as exc:
            return Decision(p, "skip", len(live), live_bytes, 0.0,
                            f"its index could not be read ({exc})")
        body_len, count = idx.body_len, len(idx.members)
        if not dry_run:
            v.db.set_pack_body(p.store, p.name, body_len, count)
    plan = plan_repack(live + _dead_members(live, body_len, count),
                       {m.ref for m in live}, fraction)
    return Decision(p, plan.action, len(live), live_bytes, plan.dead_fraction)


def plan(v: Archive, dry_run: bool = False) -> list[Decision]:
    """A decision for every pack the state holds."""
    fraction = v.cfg.pack.prune_dead_fraction
    return [decide(v, p, v.db.pack_members(p.store, p.name), fraction, dry_run)
            for p in v.db.packs()]


# ------------------------------------------------------------------ repacking

class MemberSource:
    """Members' checked bytes for a repack: the device's own copy of a private
    container when it matches the member's digest, else the old pack, downloaded once
    (one request, not one per member) into a work folder."""

    def __init__(self, v: Archive, progress: Progress | None = None) -> None:
        self.v, self.progress = v, progress
        self.tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=v.root / "work"))
        self.packs: dict[tuple[str, str], Path] = {}
        self.lock = threading.Lock()

    def read(self, v: Archive, obj: ObjectRow) -> bytes:
        if obj.role == "private":
            try:
                data = v.container_path(obj.file_id).read_bytes()
            except OSError:
                data = None
            if data is not None and len(data) == obj.length \
                    and digests.of(obj.digest_alg or "", data) == obj.digest:
                return data
        path = self._pack(obj.store, obj.name)
        with open(path, "rb") as f:
            def source(off: int, n: int) -> bytes:
                f.seek(off)
                return f.read(n)
            return extract(source, obj.offset, obj.length, master_key=v.key, name=obj.name,
                           digest=obj.digest, digest_alg=obj.digest_alg or "")

    def _pack(self, store: str, name: str) -> Path:
        with self.lock:
            path = self.packs.get((store, name))
            if path is not None:
                return path
            path = self.tmp / name
            try:
                with open(path, "wb") as out:
                    for chunk in self.v.store(store).get(name):
                        out.write(chunk)
                        if self.progress:
                            self.progress(len(chunk))
            except NotFound:
                self.v.db.set_pack_state(store, name, "missing")  # every member went with it
                raise
            self.packs[(store, name)] = path
            return path

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def send_repacked(v: Archive, job: PackJob, source: MemberSource, throttle: Throttle,
                  progress: Progress | None = None) -> tuple[PackRow, int]:
    """One new pack of members already stored elsewhere: name planned, built from checked
    bytes, uploaded, members re-pointed (those still where they were read from). Returns
    the pack and how many rows moved; on failure the planned name goes to the trash."""
    name = new_object_name()
    v.db.plan_pack(job.store, name)
    path = None
    try:
        row, placed, path = build(v, job, name, source.read)
        send(v, Upload("", job.store, name, path, row.size, row.digest, job.digest_alg,
                       resumable=False), throttle, progress)
        moved = [MovedMember(o.id, o.name, o.offset, m.offset, m.length, m.digest)
                 for o, m in zip(job.objs, placed)]
        with held():  # no backup reads the change log half way through the move
            n = v.db.move_members(row, moved)
    except BaseException:
        v.db.abandon_pack(job.store, name)
        raise
    finally:
        if path is not None:
            Path(path).unlink(missing_ok=True)
    v.db.store_ok(job.store)
    event(logging.INFO, "pack rewritten", store=job.store, kind=job.kind, members=n)
    return row, n


def repack_jobs(v: Archive, packs: Iterable[PackRow], exclude: frozenset[str] = frozenset()
                ) -> list[tuple[PackJob, list[str]]]:
    """The new packs for the live members of `packs` (less the files in `exclude`), in
    pack order, per store, kind and digest algorithm, each with the old packs it drains."""
    rows: list[ObjectRow] = []
    for p in packs:
        rows += [o for o in v.db.pack_members(p.store, p.name) if o.file_id not in exclude]
    jobs = plan_packs(rows, v.cfg.pack.pack_size)
    return [(j, sorted({o.name for o in j.objs})) for j in jobs]


def rewrite(v: Archive, packs: list[PackRow], exclude: frozenset[str] = frozenset(),
            throttle: Throttle | None = None, progress: Progress | None = None,
            stop: threading.Event | None = None, report: PruneReport | None = None
            ) -> PruneReport:
    """Copy the live members of `packs` into new packs and re-point them. With `report`,
    a failed pack is recorded there and the others go on; without, the first failure
    raises (forget: all or nothing before anything is erased)."""
    out = report if report is not None else PruneReport()
    throttle = throttle or Throttle(v.cfg.schedule.bandwidth())
    source = MemberSource(v, progress)
    try:
        for job, olds in repack_jobs(v, packs, exclude):
            if stop is not None and stop.is_set():
                out.interrupted = True
                break
            try:
                row, n = send_repacked(v, job, source, throttle, progress)
            except (StoreError, OSError, KeyError, DispersiondError) as exc:
                if isinstance(exc, StoreError):
                    v.db.store_error(job.store, str(exc))
                if report is None:
                    raise
                out.failed.append({"store": job.store, "packs": olds, "error": str(exc)})
                event(logging.WARNING, "pack rewrite failed", store=job.store,
                      error=type(exc).__name__)
                continue
            out.new_packs.append({"store": row.store, "pack": row.name, "kind": row.kind,
                                  "members": n, "size": row.size, "from": olds})
    finally:
        source.close()
    return out


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
        for p in (v.root / "work").glob(_TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in (v.root / "work").glob("pack-*"):  # a build no planned name owns any more
            p.unlink(missing_ok=True)
    deleted, waiting = release(v, write=exclusive)
    v.empty_trash()
    return deleted, waiting


# ------------------------------------------------------------------ the sweep

def _judge(v: Archive, store: str, name: str) -> tuple[str, str | None]:
    """(delete | keep | foreign | gone, why) for one name the state does not know."""
    if not _OBJECT_NAME.fullmatch(name):
        return "foreign", "not a name dispersiond gives its objects"
    s = v.store(store)
    try:
        size = s.stat(name).size
        idx = open_index(v.key, name, lambda off, n: s.get_bytes(name, off, n), size)
    except NotFound:
        return "gone", None
    except DispersiondError:
        return "foreign", "not a pack under this master key (left alone)"
    for m in idx.members:
        fid = m.ref.hex()
        if v.db.file(fid) is None:
            continue
        good = [o for o in v.db.objects(fid, role=idx.kind) if o.store == store
                and o.state == "uploaded"]
        if not good:
            return "keep", (f"holds a member of file {fid} that has no good copy on this "
                            "store: run 'dispersiond repair', then prune again")
    return "delete", None


def sweep(v: Archive, report: PruneReport, now: float | None = None,
          dry_run: bool = False, stop: threading.Event | None = None) -> None:
    """List every store; delete our packs nobody references once `sweep_grace` has passed
    since they were first seen; report everything else the state does not know."""
    now = time.time() if now is None else now
    grace = v.cfg.pack.sweep_grace
    for sc in v.cfg.stores:
        if stop is not None and stop.is_set():
            report.interrupted = True
            return
        try:
            listed = {n for n in v.store(sc.name).list("") if not n.startswith(manifest.PREFIX)}
        except (StoreError, KeyError) as exc:
            report.swept.append({"store": sc.name, "name": None, "action": "unlisted",
                                 "reason": str(exc)})
            continue
        unknown = listed - v.db.known_names(sc.name)
        seen = v.db.seen_unknown(sc.name) if dry_run else v.db.note_unknown(sc.name, unknown, now)
        for name in sorted(unknown):
            first = seen.get(name, now)
            if now - first < grace:
                report.swept.append({"store": sc.name, "name": name, "action": "waiting",
                                     "reason": f"first seen unreferenced {_ago(now - first)} "
                                               "ago; deleted after sweep_grace if a pack"})
                continue
            try:
                action, why = _judge(v, sc.name, name)
            except (StoreError, KeyError) as exc:
                action, why = "unread", str(exc)
            if action == "gone":
                continue
            if action == "delete" and not dry_run:
                if name in v.db.known_names(sc.name):
                    continue  # taken up meanwhile (the daemon's uploads)
                v.db.sweep_out(sc.name, name)
            report.swept.append({"store": sc.name, "name": name, "action": action,
                                 **({"reason": why} if why else {})})
    if not dry_run:
        v.empty_trash()


def _ago(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


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
    if swept:
        sweep(v, report, now, dry_run, stop)
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


__all__ = ["Decision", "MemberSource", "PruneReport", "decide", "housekeeping", "plan",
           "progress_total", "prune", "release", "rewrite", "send_repacked", "sweep"]
