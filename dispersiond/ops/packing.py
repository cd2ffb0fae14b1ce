"""Packing small files' fragments (docs/FORMAT.md §8): which pending objects go into a
pack, building one pack per store and kind from the staged copies, sending it, and the
one transaction that points every member at it.

A pack's name is recorded (`planned`) before its upload; a crash before the commit
leaves the members pending (they are packed again, under a new name) and the planned
name goes to the trash at the next start, so no pack is ever left unaccounted for.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from backends import StoreError

from .. import digests
from ..errors import IntegrityError
from ..fsutil import read_whole
from ..logs import event
from ..placement import new_object_name
from ..state import ObjectRow, PackRow, PlacedMember
from ..archive import Progress, Archive
from .pack_files import write_pack
from .upload import Throttle, Upload, send, send_all


#: A member's bytes for `build`, checked against its row's digest (raises IntegrityError).
MemberSource = Callable[[ObjectRow], bytes]


def packable(v: Archive, obj: ObjectRow) -> bool:
    """A pending fragment below the packing threshold (large ones keep their own objects
    and the streaming upload)."""
    return (obj.state == "pending" and not obj.packed
            and obj.object_size < v.cfg.pack.threshold)


@dataclass(frozen=True)
class PackJob:
    """The members of one pack: pending objects bound for one store, of one kind."""

    store: str
    kind: str  # public | private
    digest_alg: str
    objs: tuple[ObjectRow, ...]

    @property
    def member_bytes(self) -> int:
        return sum(o.length for o in self.objs)


def plan_packs(objs: Iterable[ObjectRow], pack_size: int) -> list[PackJob]:
    """Group objects by (store, kind, digest algorithm) in the order given, each group cut
    into packs of about `pack_size` member bytes (a pack closes once it reaches it). Pure."""
    groups: dict[tuple[str, str, str], list[list[ObjectRow]]] = {}
    filled: dict[tuple[str, str, str], int] = {}  # member bytes of each group's last pack
    seen: set[tuple[str, str]] = set()
    for o in objs:
        ref = (o.store, o.file_id)
        if ref in seen:  # one member per file and pack (the reference is the file id)
            continue
        seen.add(ref)
        key = (o.store, o.role, o.digest_alg or "")
        packs = groups.setdefault(key, [[]])
        if filled.get(key, 0) >= pack_size:
            packs.append([])
            filled[key] = 0
        packs[-1].append(o)
        filled[key] = filled.get(key, 0) + o.length
    return [PackJob(store, kind, alg, tuple(members))
            for (store, kind, alg), packs in groups.items() for members in packs if members]


def _member_bytes(v: Archive, obj: ObjectRow) -> bytes:
    """The fragment from its staged copy, checked against the digest the encode recorded
    (the staged copy carries the padding a standalone object would have had)."""
    if obj.role == "private":
        data = v.container(obj.file_id)
        if data is None:
            raise FileNotFoundError(f"the private container of file {obj.file_id} is not on "
                                    "this device")
    else:
        held = v.held.part(obj.file_id, staged_name(obj))
        data = held if held is not None else read_whole(v.staged_path(obj.file_id, obj.role,
                                                                      obj.shard))
    if len(data) != obj.object_size or digests.of(obj.digest_alg or "", data) != obj.digest:
        raise IntegrityError(f"staged {obj.role} object of file {obj.file_id} does not match "
                             "what its encode recorded (damaged on local disk): the file is "
                             "encoded again")
    return data[:obj.length]


def staged_name(obj: ObjectRow) -> str:
    """The name of a public object's staged copy (or held fragment, held.py)."""
    return "puf" if obj.shard is None else f"shard-{obj.shard}"


_STAGED_PACK = "pack-"  # staging area name prefix of a pack being built or sent


def _staged_pack(v: Archive, name: str) -> Path:
    return v.root / "work" / f"{_STAGED_PACK}{name}"


def remove_staged_packs(v: Archive) -> None:
    """Packs a killed process was building or sending (their names were planned, and go
    to the trash with the others): removed from the staging area, at start-up only."""
    for stale in (v.root / "work").glob(f"{_STAGED_PACK}*"):
        stale.unlink(missing_ok=True)


def build(v: Archive, job: PackJob, name: str,
          members: MemberSource | None = None) -> tuple[PackRow, list[PlacedMember], "os.PathLike"]:
    """Write the pack into the staging area; returns its row, where each member landed,
    and the staged file. `members` gives each member's bytes, checked (default: its staged
    copy; repair gives the rebuilt ones)."""
    read = members or (lambda obj: _member_bytes(v, obj))
    path = _staged_pack(v, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = write_pack(v.key, job.store, name, job.kind, job.digest_alg, v.cfg.public.pad,
                       ((obj.file_id, read(obj)) for obj in job.objs), path)
    placed = [PlacedMember(obj.id, m.offset, m.length, m.digest)
              for obj, m in zip(job.objs, built.members)]
    return built.row, placed, path


def send_pack(v: Archive, job: PackJob, throttle: Throttle,
              progress: Progress | None = None, members: MemberSource | None = None,
              release: Iterable[tuple[str, str]] = ()) -> PackRow:
    """Build, upload and commit one pack; raises StoreError, OSError or IntegrityError
    (then the members stay where they were and the pack's name goes to the trash).
    `members` and `release`: repair's rebuilt bytes, and the old packs to give up."""
    name = new_object_name()
    v.db.plan_pack(job.store, name)
    path = None
    try:
        row, placed, path = build(v, job, name, members)
        send(v, Upload("", job.store, name, path, row.size, row.digest, job.digest_alg),
             throttle, progress)
        v.db.commit_pack(row, placed, release)
    except BaseException:
        v.db.abandon_pack(job.store, name)
        if job.kind == "public":
            spill_held(v, {obj.file_id for obj in job.objs})
        raise
    finally:
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    if job.kind == "public":
        for obj in job.objs:
            v.held.landed(obj.file_id, job.store)
    v.db.store_ok(job.store)
    event(logging.INFO, "pack stored", store=job.store, kind=job.kind, members=len(placed))
    return row


def spill_held(v: Archive, fids: set[str]) -> None:
    """A pack of held fragments did not land: write them out as staged copies (durable)
    so that they are retried from disk and their containers may follow. If that fails
    too they stay held (a crash then has them encoded again)."""
    try:
        v.held.spill(v.root / "work", fids & v.held.files())
    except OSError as exc:
        event(logging.WARNING, "held fragments could not be written out; they stay in "
              "memory", error=type(exc).__name__)


def waiting_for_public(v: Archive, obj: ObjectRow) -> bool:
    """Must this pending private container wait (a public fragment of its file is held
    in memory only, not yet in a pack)? See held.py."""
    return obj.role == "private" and v.held.waiting(obj.file_id)


def send_objects(v: Archive, objs: list[ObjectRow], throttle: Throttle | None = None,
                 progress: Progress | None = None) -> list[tuple[str, Exception]]:
    """Send pending objects, each recorded as it lands: the small ones in packs (one per
    store and kind, `pack_size` at most), the others as objects of their own, all in
    parallel. Returns the failures as (store, error)."""
    throttle = throttle or Throttle(v.cfg.schedule.bandwidth())
    small = [o for o in objs if packable(v, o)]
    large = [o for o in objs if not packable(v, o)]
    failures: list[tuple[str, Exception]] = []

    def one_pack(job: PackJob) -> None:
        try:
            send_pack(v, job, throttle, progress)
        except (StoreError, OSError, IntegrityError, KeyError) as exc:
            v.db.store_error(job.store, str(exc))
            event(logging.WARNING, "pack upload failed", store=job.store,
                  error=type(exc).__name__)
            failures.append((job.store, exc))

    ids = {(o.store, o.name): o.id for o in large}
    later = [o for o in small if waiting_for_public(v, o)]  # after their public packs
    jobs = plan_packs([o for o in small if not waiting_for_public(v, o)], v.cfg.pack.pack_size)
    with ThreadPoolExecutor(max_workers=max(1, min(v.cfg.upload_workers, len(jobs)))) as ex:
        running = [ex.submit(one_pack, j) for j in jobs]
        failures += send_all(v, [Upload.of_row(v, o) for o in large], throttle, progress,
                             on_sent=lambda job: v.db.set_objects_uploaded(
                                 [ids[job.store, job.name]]))
        for fut in running:
            fut.result()
    if later:  # every held fragment has landed or been written out by now
        ready = [o for o in later if not waiting_for_public(v, o)]
        jobs = plan_packs(ready, v.cfg.pack.pack_size)
        with ThreadPoolExecutor(max_workers=max(1, min(v.cfg.upload_workers,
                                                       len(jobs)))) as ex:
            for fut in [ex.submit(one_pack, j) for j in jobs]:
                fut.result()
        for store in sorted({o.store for o in later if waiting_for_public(v, o)}):
            failures.append((store, OSError("a public fragment of the file could not be "
                                            "stored or written out")))
    return failures
