"""The `repair` operation: verify, then rebuild every missing or corrupt copy from the
survivors (an intact replica, or any k shards) and put it under a fresh name."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from backends import StoreError

from .. import digests
from ..errors import DispersiondError
from ..logs import event
from .backup import backup_manifest
from ..placement import HashingWriter, rebuild_shards
from ..state import PROTECTED, ObjectRow
from ..archive import Progress, Archive
from .restore import first_intact, gather_shards, private_container
from .upload import replace_copy
from .verify import verify


@dataclass
class RepairReport:
    repaired: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"repaired": self.repaired, "failed": self.failed}


def repair(v: Archive, deep: bool = False, progress: Progress | None = None) -> RepairReport:
    """Verify, then rebuild every missing or corrupt copy from the survivors."""
    verify(v, deep=deep, progress=progress)
    rep = RepairReport()
    bad_files = v.db.broken_file_ids()
    for fid in sorted(bad_files):
        f = v.db.file(fid)
        if f is None or f.state not in PROTECTED:
            continue
        with tempfile.TemporaryDirectory(prefix=".repair-", dir=v.root / "work") as tmpd:
            tmp = Path(tmpd)
            for obj in v.db.objects(fid, states=("missing", "corrupt", "pending")):
                try:
                    _rebuild(v, f, obj, tmp, progress)
                    rep.repaired.append({"file_id": fid, "store": obj.store, "role": obj.role,
                                         "shard": obj.shard})
                except (StoreError, DispersiondError, OSError) as exc:
                    rep.failed.append({"file_id": fid, "store": obj.store, "role": obj.role,
                                       "shard": obj.shard, "error": str(exc)})
    v.empty_trash()
    if rep.repaired:
        v.db.mark_manifest_dirty()
        backup_manifest(v)
    return rep


def _rebuild(v: Archive, f, obj: ObjectRow, tmp: Path, progress: Progress | None) -> None:
    """Write a fresh copy of `obj` under a new name on the same store, retire the old one."""
    staged = v.staged_path(f.file_id, obj.role, obj.shard)
    src: Path
    if obj.state == "pending" and staged.exists():
        src = staged  # never uploaded: the stage is still there
    elif obj.role == "private":
        src = private_container(v, f, tmp, progress)
    elif f.public_mode != "erasure":
        src = _good_replica(v, f, tmp, progress)
    else:
        src = _rebuilt_shard(v, f, obj, tmp, progress)
    replace_copy(v, obj, src, digests.of_path(f.digest_alg, src), checked=time.time())
    event(logging.INFO, "copy rebuilt", file_id=f.file_id, store=obj.store, role=obj.role)


def _good_replica(v: Archive, f, tmp: Path, progress: Progress | None) -> Path:
    errors: list[str] = []
    got = first_intact(v, v.db.objects(f.file_id, role="public", states=("uploaded",)), tmp,
                       "replica", errors, progress)
    if got:
        return got[1]
    raise DispersiondError(f"file {f.file_id}: no intact replica to copy from ({'; '.join(errors)})")


def _rebuilt_shard(v: Archive, f, obj: ObjectRow, tmp: Path, progress: Progress | None) -> Path:
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
            w.pad_random(obj.object_size)
    finally:
        for r in readers.values():
            r.close()
    return out


