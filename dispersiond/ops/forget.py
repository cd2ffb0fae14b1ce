"""The `forget` operation: crypto-erasure of one file.

Every copy of the private container goes, then the manifest entry, the public objects
(unless kept on purpose) and every plaintext copy the state directory still holds (the
original kept by `after: keep`, a claimed or quarantined original, a staging or rekey
work folder). Without the container the public bytes are noise to everyone, the user
included. A copy outside the state directory (the file `put` read, or one moved by
`after: move`) is the user's own: it is reported, never deleted.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from backends import NotFound, StoreError

from ..errors import DispersiondError
from .backup import backup_manifest, drop_all_backups_but_newest
from ..state import FileRow
from ..archive import Archive


def forget(v: Archive, ref: str, keep_public: bool = False) -> dict:
    """Erase one file for good; returns the objects deleted and deferred (store down), the
    local copies removed, and the user's own copies left in place."""
    f = v.resolve(ref)
    deleted, failed = _delete_objects(v, f, keep_public)
    if any(x["role"] == "private" for x in failed):
        raise DispersiondError(
            "could not delete every private container copy: "
            + "; ".join(f"{x['store']}: {x['error']}" for x in failed if x["role"] == "private")
            + ". Nothing was forgotten locally; run forget again when the store answers")
    local = v.container_path(f.file_id)
    if local.exists():
        local.unlink()
        deleted.append({"store": "(this device)", "role": "private", "object": str(local)})
    removed, left = _drop_local_copies(v, f)
    with v.db.tx() as conn:
        # public copies on a store that is down: delete later
        v.db.trash_many([(x["store"], x["object"]) for x in failed], conn)
        if not keep_public:  # and the copies behind earlier shares' links: revoked
            v.db.trash_share_copies(f.file_id, conn)
        v.db.delete_file(f.file_id, conn)
        v.db.mark_manifest_dirty(conn)
    v.audit("forget", f.file_id, keep_public=keep_public)
    backup_manifest(v, force=True)
    drop_all_backups_but_newest(v)
    return {"file_id": f.file_id, "deleted": deleted, "deferred": failed,
            "removed_local": [str(p) for p in removed], "left": [str(p) for p in left]}


def _delete_objects(v: Archive, f: FileRow, keep_public: bool) -> tuple[list[dict], list[dict]]:
    deleted: list[dict] = []
    failed: list[dict] = []
    for obj in v.db.objects(f.file_id):
        if obj.role == "public" and keep_public:
            continue
        try:
            v.store(obj.store).delete(obj.name)
            deleted.append({"store": obj.store, "role": obj.role, "object": obj.name})
        except NotFound:
            deleted.append({"store": obj.store, "role": obj.role, "object": obj.name,
                            "note": "already gone"})
        except StoreError as exc:
            failed.append({"store": obj.store, "role": obj.role, "object": obj.name,
                           "error": str(exc)})
    return deleted, failed


def local_copies(v: Archive, f: FileRow) -> list[Path]:
    """Every place under the state directory (and the quarantine folder) where this file's
    plaintext or staged objects may lie."""
    fid = f.file_id
    quarantine = v.cfg.path(v.cfg.quarantine_dir) if v.cfg.quarantine_dir else None
    places = [v.work_dir(fid), v.root / "work" / f"rekey-{fid}",
              v.root / "claimed" / fid, v.root / "claimed" / f".{fid}.part",
              v.root / "quarantine" / fid]
    if quarantine is not None:
        places.append(quarantine / fid)
    if f.source and _inside(Path(f.source), v.root):
        places.append(Path(f.source))  # e.g. state/kept/<name>, written by `after: keep`
    return places


def _drop_local_copies(v: Archive, f: FileRow) -> tuple[list[Path], list[Path]]:
    """Remove the state directory's copies; returns (removed, the user's own copies left)."""
    removed = []
    for p in local_copies(v, f):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    left = [Path(f.source)] if (f.source and not _inside(Path(f.source), v.root)
                                and Path(f.source).exists()) else []
    return removed, left


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False
