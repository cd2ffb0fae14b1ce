"""Fetching and checking fragments, and rebuilding a file bit-exact.

Every object is checked against the manifest's digest before use; a bad or
missing copy is marked and the next copy (or shard) is tried. The output is
written to a temporary file and renamed into place only after the codec's own
authentication and the original's digest both passed.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from backends import NotFound, StoreError, Unavailable

from . import codec, digests
from .errors import DispersiondError, IntegrityError
from .fsutil import atomic_output
from .logs import event
from .placement import HashingWriter, decode_shards
from .state import PROTECTED, FileRow, ObjectRow
from .vault import Progress, Vault


class Unrestorable(DispersiondError):
    """Not enough intact copies could be fetched."""


def fetch_object(v: Vault, obj: ObjectRow, dest: BinaryIO,
                 progress: Progress | None = None) -> None:
    """Download one object into `dest`, checking size and digest; marks the object's state."""
    w = HashingWriter(dest, obj.digest_alg)
    try:
        for chunk in v.store(obj.store).get(obj.name):
            w.write(chunk)
            if progress:
                progress(len(chunk))
    except NotFound:
        v.db.set_object_state(obj.id, "missing")
        raise
    if w.n != obj.object_size or w.hexdigest() != obj.digest:
        v.db.set_object_state(obj.id, "corrupt")
        event(logging.WARNING, "object failed its digest", file_id=obj.file_id, store=obj.store,
              object=obj.name)
        raise IntegrityError(f"store {obj.store!r}: object {obj.name} of file {obj.file_id} "
                             "does not match its digest (altered or damaged)")
    v.db.store_ok(obj.store)


def _try_fetch(v: Vault, obj: ObjectRow, path: Path, errors: list[str],
               progress: Progress | None) -> bool:
    try:
        with open(path, "wb") as f:
            fetch_object(v, obj, f, progress)
        return True
    except NotFound:
        errors.append(f"{obj.store}: missing")
    except IntegrityError as exc:
        errors.append(f"{obj.store}: {exc}")
    except StoreError as exc:
        errors.append(f"{obj.store}: {exc}")
        v.db.store_error(obj.store, str(exc))
        if isinstance(exc, Unavailable):
            v.down.add(obj.store)
    return False


def _order(v: Vault, objs: list[ObjectRow]) -> list[ObjectRow]:
    """Copies believed good first; stores that failed lately (in this run, or in the
    last few minutes with no success since) last, so a dead cloud costs no waiting
    while the others suffice."""
    import time

    recent = time.time() - 300
    failing = set(v.down) | {
        s["store"] for s in v.db.store_status()
        if s["error_at"] and s["error_at"] > recent and (s["last_ok"] or 0) < s["error_at"]}
    return sorted(objs, key=lambda o: (o.store in failing, o.state != "uploaded",
                                       o.shard if o.shard is not None else 0))


def first_intact(v: Vault, objs: list[ObjectRow], tmp: Path, label: str, errors: list[str],
                 progress: Progress | None = None) -> tuple[ObjectRow, Path] | None:
    """The first of `objs` (best first) that downloads intact, as (object, local file)."""
    for obj in _order(v, objs):
        path = tmp / f"{label}-{obj.id}"
        if _try_fetch(v, obj, path, errors, progress):
            return obj, path
    return None


def private_container(v: Vault, f: FileRow, tmp: Path, progress: Progress | None = None) -> Path:
    """The local container if intact, else a verified copy from a private store."""
    local = v.prf_path(f.file_id)
    if local.exists():
        if digests.of_path(f.digest_alg, local) == f.container_digest:
            return local
        event(logging.WARNING, "local private container damaged; using a backup",
              file_id=f.file_id)
    errors: list[str] = []
    got = first_intact(v, v.db.objects(f.file_id, role="private"), tmp, "prf", errors, progress)
    if got:
        return got[1]
    raise Unrestorable(f"file {f.file_id}: no intact private container ({'; '.join(errors) or 'none recorded'})")


def public_fragment(v: Vault, f: FileRow, tmp: Path, progress: Progress | None = None) -> Path:
    """A verified public fragment file (replica, or rebuilt from any k shards)."""
    errors: list[str] = []
    if f.public_mode != "erasure":
        got = first_intact(v, v.db.objects(f.file_id, role="public"), tmp, "puf", errors,
                           progress)
        if got:
            obj, path = got
            os.truncate(path, obj.length)  # drop the size padding
            return path
        raise Unrestorable(f"file {f.file_id}: no intact public replica ({'; '.join(errors)})")
    good = gather_shards(v, f, tmp, errors, progress)
    if len(good) < f.k:
        raise Unrestorable(f"file {f.file_id}: only {len(good)} of the {f.k} shards needed are "
                           f"intact ({'; '.join(errors)})")
    out = tmp / "puf"
    readers = {i: open(p, "rb") for i, p in good.items()}
    try:
        with open(out, "wb") as fo:
            decode_shards(f.puf_len, f.k, f.n, f.block, readers, fo)
    finally:
        for r in readers.values():
            r.close()
    return out


def gather_shards(v: Vault, f: FileRow, tmp: Path, errors: list[str],
                  progress: Progress | None = None, exclude: int | None = None,
                  states: tuple[str, ...] | None = None) -> dict[int, Path]:
    """Download intact shards (shard number -> file) until k are had or none are left
    (of those in `states`, when given)."""
    good: dict[int, Path] = {}
    for obj in _order(v, v.db.objects(f.file_id, role="public", states=states)):
        if len(good) == f.k:
            break
        if obj.shard == exclude:
            continue
        path = tmp / f"shard-{obj.shard}"
        if _try_fetch(v, obj, path, errors, progress):
            good[obj.shard] = path
    return good


def decode_to(v: Vault, f: FileRow, puf: Path, prf: Path, out: BinaryIO) -> None:
    """Decode into `out`, then check the original's digest."""
    w = HashingWriter(out, f.digest_alg)
    with open(puf, "rb") as pu, open(prf, "rb") as pr:
        codec.decode_stream(f.scheme, v.key, pu, f.puf_len, pr, f.container_len, w)
    if w.n != f.size or (f.digest and w.hexdigest() != f.digest):
        raise IntegrityError(f"file {f.file_id}: rebuilt bytes do not match the recorded "
                             "digest of the original")


def restore(v: Vault, ref: str, dest: Path, *, force: bool = False,
            progress: Progress | None = None) -> FileRow:
    """Rebuild one file at `dest` bit-exact; never writes unverified bytes over anything."""
    f = v.resolve(ref)
    if f.state not in PROTECTED:
        raise DispersiondError(f"file {f.file_id} is not protected yet (state {f.state})")
    if dest.is_dir():
        dest = dest / f.name
    if dest.exists() and not force:
        raise DispersiondError(f"{dest} exists; choose another --to or pass --force")
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=v.root / "work") as tmpd:
        tmp = Path(tmpd)
        prf = private_container(v, f, tmp, progress)
        puf = public_fragment(v, f, tmp, progress)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest, overwrite=force) as out:
            decode_to(v, f, puf, prf, out)
    v.audit("restore", f.file_id)
    event(logging.INFO, "file restored", file_id=f.file_id)
    return f
