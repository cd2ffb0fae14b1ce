"""Rewriting packs: the live members of old packs copied, each checked against its
digest, into new packs under new names (docs/FORMAT.md §8.5), for prune and forget.

A new pack's name is planned before its upload; its members are re-pointed in one
transaction, each only if its row still points where the copy was read from, so a crash
or a concurrent change never leaves a row pointing at bytes that are not its own. The
old packs are left to `prune.release`, which deletes them once a backup allows.
"""
from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from backends import NotFound, StoreError

from .. import scratch
from .. import digests
from ..errors import DispersiondError
from ..logs import event
from ..pack import extract
from ..placement import new_object_name
from ..state import MovedMember, ObjectRow, PackRow
from ..archive import Progress, Archive
from .backup import held
from .packing import PackJob, build, plan_packs
from .upload import Throttle, Upload, send

#: Work folders of a rewrite (downloaded old packs), removed at the next exclusive run.
TMP_PREFIX = ".prune-"


@dataclass
class Rewritten:
    new_packs: list[dict] = field(default_factory=list)  # store, pack, kind, members, size, from
    failed: list[dict] = field(default_factory=list)     # store, packs, error
    interrupted: bool = False


class MemberSource:
    """Members' checked bytes for a repack: the device's own copy of a private
    container when it matches the member's digest, else the old pack, downloaded once
    (one request, not one per member) into a work folder."""

    def __init__(self, v: Archive, progress: Progress | None = None) -> None:
        self.v, self.progress = v, progress
        self.tmp = scratch.new_folder(v.root / "work", TMP_PREFIX.strip(".-"))
        self.packs: dict[tuple[str, str], Path] = {}
        self.lock = threading.Lock()

    def read(self, obj: ObjectRow) -> bytes:
        v = self.v
        if obj.role == "private":
            try:
                data = v.container(obj.file_id)
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

    def drop(self, store: str, name: str) -> None:
        """A downloaded pack no job still needs: its disk space back at once."""
        with self.lock:
            path = self.packs.pop((store, name), None)
        if path is not None:
            path.unlink(missing_ok=True)

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
            stop: threading.Event | None = None, report: Rewritten | None = None
            ) -> Rewritten:
    """Copy the live members of `packs` into new packs and re-point them. With `report`,
    a failed pack is recorded there and the others go on; without, the first failure
    raises (forget: all or nothing before anything is erased)."""
    out = report if report is not None else Rewritten()
    throttle = throttle or Throttle(v.cfg.schedule.bandwidth())
    source = MemberSource(v, progress)
    jobs = repack_jobs(v, packs, exclude)
    last = {(job.store, name): i for i, (job, olds) in enumerate(jobs) for name in olds}
    try:
        for i, (job, olds) in enumerate(jobs):
            for (store, name), j in last.items():
                if j == i - 1:
                    source.drop(store, name)  # no later job reads it
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
