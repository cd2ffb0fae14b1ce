"""The `repair` operation: verify, then rebuild every missing or corrupt copy from the
survivors (an intact replica, or any k shards) and put it under a fresh name.

A standalone object is replaced by a standalone object. Packed members are re-packed
(docs/FORMAT.md §8.5), never copied byte for byte from another store (another store's
pack has another name and mask): each pack holding a broken member is rewritten for its
own store, its intact members copied (digest-checked) from it and the broken ones rebuilt,
all of a store's into one new pack; the old pack is given up once no member points into it.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from backends import NotFound, StoreError

from .. import scratch
from .. import digests
from ..errors import DispersiondError, IntegrityError
from ..logs import event
from .backup import backup_manifest
from ..pack import extract
from ..placement import HashingWriter, rebuild_shards
from ..state import PROTECTED, FileRow, ObjectRow
from ..archive import Progress, Archive
from .pack_checks import downloaded
from .packing import PackJob, plan_packs, send_pack
from .restore import first_intact, gather_shards, private_container
from .upload import Throttle, replace_copy
from .verify import same_key, verify

#: Object states repair rebuilds (a pending one is sent from its stage).
BROKEN = ("missing", "corrupt", "pending")


@dataclass
class RepairReport:
    repaired: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    repacked: list[dict] = field(default_factory=list)  # one per new pack

    def as_dict(self) -> dict:
        return {"repaired": self.repaired, "failed": self.failed, "repacked": self.repacked}


def repair(v: Archive, deep: bool = False, progress: Progress | None = None) -> RepairReport:
    """Verify, then rebuild every missing or corrupt copy from the survivors."""
    verify(v, deep=deep, progress=progress)
    rep = RepairReport()
    packed: list[ObjectRow] = []
    for fid in sorted(v.db.broken_file_ids()):
        f = v.db.file(fid)
        if f is None or f.state not in PROTECTED:
            continue
        with scratch.folder(v.root / "work", "repair") as tmpd:
            tmp = Path(tmpd)
            for obj in v.db.objects(fid, states=BROKEN):
                if obj.packed:
                    packed.append(obj)
                    continue
                try:
                    _rebuild(v, f, obj, tmp, progress)
                    rep.repaired.append(_entry(obj))
                except (StoreError, DispersiondError, OSError) as exc:
                    rep.failed.append({**_entry(obj), "error": str(exc)})
    for store in sorted({o.store for o in packed}):
        _repack_store(v, store, sorted({o.name for o in packed if o.store == store}), rep,
                      progress)
    v.empty_trash()
    if rep.repaired:
        v.db.mark_manifest_dirty()
        backup_manifest(v)
    return rep


def _entry(obj: ObjectRow) -> dict:
    return {"file_id": obj.file_id, "store": obj.store, "role": obj.role, "shard": obj.shard}


# --------------------------------------------------------------- standalone objects

def _rebuild(v: Archive, f: FileRow, obj: ObjectRow, tmp: Path,
             progress: Progress | None) -> None:
    """Write a fresh copy of `obj` under a new name on the same store, retire the old one."""
    staged = v.staged_path(f.file_id, obj.role, obj.shard)
    src: Path
    if obj.state == "pending" and staged.exists():
        src = staged  # never uploaded: the stage is still there
    elif obj.role == "private":
        src = private_container(v, f, tmp, progress)
    elif f.public_mode != "erasure":
        src = _good_replica(v, f, tmp, progress)
        if src.stat().st_size < obj.object_size:  # from a pack: the fragment alone
            with open(src, "ab") as fo:
                HashingWriter(fo, f.digest_alg or "").pad_random(
                    obj.object_size - src.stat().st_size)
    else:
        src = _rebuilt_shard(v, f, obj, tmp, progress, pad_to=obj.object_size)
    replace_copy(v, obj, src, digests.of_path(f.digest_alg, src), checked=time.time())
    event(logging.INFO, "copy rebuilt", file_id=f.file_id, store=obj.store, role=obj.role)


def _good_replica(v: Archive, f: FileRow, tmp: Path, progress: Progress | None,
                  exclude: str | None = None) -> Path:
    """An intact replica from any store (but `exclude`), as downloaded: a standalone
    object with its padding, or a packed member's fragment."""
    errors: list[str] = []
    objs = [o for o in v.db.objects(f.file_id, role="public", states=("uploaded",))
            if o.store != exclude]
    got = first_intact(v, objs, tmp, "replica", errors, progress)
    if got:
        return got[1]
    raise DispersiondError(f"file {f.file_id}: no intact replica to copy from ({'; '.join(errors)})")


def _rebuilt_shard(v: Archive, f: FileRow, obj: ObjectRow, tmp: Path,
                   progress: Progress | None, pad_to: int = 0) -> Path:
    """Shard `obj.shard` re-encoded from k intact others (padded up to `pad_to`)."""
    errors: list[str] = []
    good = gather_shards(v, f, tmp, errors, progress, exclude=obj.shard,
                         states=("uploaded",))
    if len(good) < f.k:
        raise DispersiondError(f"file {f.file_id}: only {len(good)} intact shards, {f.k} needed "
                               f"to rebuild shard {obj.shard} ({'; '.join(errors)})")
    out = tmp / f"rebuilt-{obj.shard}"
    readers = {i: open(p, "rb") for i, p in good.items()}
    try:
        with open(out, "wb") as fo:
            w = HashingWriter(fo, f.digest_alg)
            rebuild_shards(f.puf_len, f.k, f.n, f.block, readers, [obj.shard], {obj.shard: w})
            w.pad_random(pad_to)
    finally:
        for r in readers.values():
            r.close()
    return out


# --------------------------------------------------------------- packed members

def _repack_store(v: Archive, store: str, old: list[str], rep: RepairReport,
                  progress: Progress | None) -> None:
    """Rewrite the packs `old` of one store: every member of a protected file, intact
    ones copied from their pack, broken ones rebuilt, into new packs (one unless they
    exceed pack_size); each old pack is trashed once no member points into it."""
    members: list[ObjectRow] = []
    files: dict[str, FileRow] = {}
    for name in old:
        for m in v.db.pack_members(store, name):
            f = v.db.file(m.file_id)
            if f is not None and f.state in PROTECTED:
                members.append(m)
                files[m.file_id] = f
    same_key(v, list(files.values()))
    with scratch.folder(v.root / "work", "repack") as tmpd:
        tmp = Path(tmpd)
        got: dict[int, Path] = {}
        for name in old:
            ours = [m for m in members if m.name == name]
            got.update(_copy_intact(v, store, name, ours, tmp, progress))
        for m in members:
            if m.id in got:
                continue
            try:
                got[m.id] = _rebuilt_member(v, files[m.file_id], m, tmp, progress)
            except (StoreError, DispersiondError, OSError) as exc:
                if m.state != "uploaded":  # an intact one simply stays in its old pack
                    rep.failed.append({**_entry(m), "error": str(exc)})
        jobs = plan_packs([m for m in members if m.id in got], v.cfg.pack.pack_size)

        def member_bytes(obj: ObjectRow) -> bytes:
            data = got[obj.id].read_bytes()
            if digests.of(obj.digest_alg or "", data) != obj.digest:  # checked once more
                raise IntegrityError(f"file {obj.file_id}: rebuilt member does not match its "
                                     "digest (damaged on local disk); nothing was sent")
            return data

        for job in jobs:
            _send(v, job, member_bytes, [(store, n) for n in old], rep, progress)


def _send(v: Archive, job: PackJob, member_bytes, release: list[tuple[str, str]],
          rep: RepairReport, progress: Progress | None) -> None:
    broken = [m for m in job.objs if m.state != "uploaded"]
    try:
        row = send_pack(v, job, Throttle(None), progress, members=member_bytes,
                        release=release)  # maintenance traffic, as before: not capped
    except (StoreError, OSError, IntegrityError) as exc:
        rep.failed += [{**_entry(m), "error": str(exc)} for m in broken]
        return
    rep.repaired += [_entry(m) for m in broken]
    rep.repacked.append({"store": job.store, "kind": job.kind, "pack": row.name,
                         "members": len(job.objs), "rebuilt": len(broken)})
    event(logging.INFO, "pack rewritten", store=job.store, kind=job.kind,
          members=len(job.objs), rebuilt=len(broken))


def _copy_intact(v: Archive, store: str, name: str, members: list[ObjectRow], tmp: Path,
                 progress: Progress | None) -> dict[int, Path]:
    """The members of pack `name` whose bytes still match their digests, each unmasked
    into its own file (one download of the whole pack; none when it is known gone)."""
    if not members or all(m.state == "missing" for m in members):
        return {}
    out: dict[int, Path] = {}
    try:
        with downloaded(v, store, name, members[0].digest_alg or "", progress) as (read, _, _):
            for m in members:
                try:
                    data = extract(read, m.offset, m.length, master_key=v.key, name=name,
                                   digest=m.digest, digest_alg=m.digest_alg or "")
                except DispersiondError:  # altered (or cut short): rebuilt instead
                    continue
                path = tmp / f"member-{m.id}"
                path.write_bytes(data)
                out[m.id] = path
    except NotFound:  # gone: every member is rebuilt from the other copies
        v.db.set_pack_state(store, name, "missing")
    except StoreError as exc:  # unreachable: the same, and the upload will say so
        v.db.store_error(store, str(exc))
    return out


def _rebuilt_member(v: Archive, f: FileRow, m: ObjectRow, tmp: Path,
                    progress: Progress | None) -> Path:
    """Member `m`'s exact bytes (a fragment without padding) from the other copies: the
    local or another private container, a replica from another store, or a shard
    re-encoded from k others; refused unless they match the member's digest."""
    scratch = Path(tempfile.mkdtemp(prefix=f"m{m.id}-", dir=tmp))
    try:
        if m.role == "private":
            src = private_container(v, f, scratch, progress)
        elif f.public_mode != "erasure":
            src = _good_replica(v, f, scratch, progress, exclude=m.store)
        else:
            src = _rebuilt_shard(v, f, m, scratch, progress)
        out = tmp / f"member-{m.id}"
        _copy_prefix(src, out, m.length)  # a standalone source carries padding after it
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if out.stat().st_size != m.length or digests.of_path(f.digest_alg, out) != m.digest:
        out.unlink()
        raise IntegrityError(f"file {f.file_id}: the {m.role} member rebuilt for store "
                             f"{m.store!r} does not match its recorded digest")
    event(logging.INFO, "member rebuilt", file_id=f.file_id, store=m.store, role=m.role)
    return out


def _copy_prefix(src: Path, dest: Path, n: int) -> None:
    """The first `n` bytes of `src` into `dest` (fewer if it is shorter)."""
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        while n > 0:
            block = fi.read(min(n, 1 << 20))
            if not block:
                return
            fo.write(block)
            n -= len(block)
