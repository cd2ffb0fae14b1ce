"""The `forget` operation: crypto-erasure of one file.

Every copy of the private container goes, then the manifest entry, the public objects
(unless kept on purpose) and every plaintext copy the state directory still holds (the
original kept by `after: keep`, a claimed or quarantined original, a staging or rekey
work folder). Without the container the public bytes are noise to everyone, the user
included. A copy outside the state directory (the file `put` read, or one moved by
`after: move`) is the user's own: it is reported, never deleted.

Packs (docs/FORMAT.md §8.5): a packed member's name is its pack's, shared with other
files, so it is never deleted by name. Every private pack holding the container is
rewritten at once without it (the other members copied, digest-checked, into a new
pack; their rows re-pointed), the file's rows go, a manifest backup naming the new
places lands, and only then the old pack is deleted (through the trash if its store is
down). Public members stay in their packs as dead bytes until prune; a pack left with
no member at all is deleted with the private ones (with --keep-public too: no share
bundle ever links into a pack).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from backends import NotFound, StoreError

from ..errors import DispersiondError
from .backup import backup_manifest, drop_all_backups_but_newest
from .prune import housekeeping, release
from .repack import rewrite
from ..state import FileRow, ObjectRow, PackRow
from ..archive import Archive


def forget(v: Archive, ref: str, keep_public: bool = False) -> dict:
    """Erase one file for good; returns the objects deleted and deferred (store down), the
    public members left in packs until prune, the local copies removed, and the user's
    own copies left in place."""
    housekeeping(v)  # what a killed forget or prune left: planned names, emptied packs
    f = v.resolve(ref)
    objs = v.db.objects(f.file_id)
    private_packs = _packs_of(v, objs, "private")
    public_packs = _packs_of(v, objs, "public")
    try:  # before anything is erased: a failure here changes nothing the user relies on
        new = rewrite(v, private_packs, exclude=frozenset({f.file_id})).new_packs
    except (StoreError, OSError, KeyError, DispersiondError) as exc:
        raise DispersiondError(
            f"could not rewrite a private pack without the file ({exc}). Nothing was "
            "forgotten; run forget again when the store answers (or 'dispersiond repair' "
            "first if a member is damaged)") from None
    deleted, failed = _delete_objects(v, f, keep_public)
    if any(x["role"] == "private" for x in failed):
        raise DispersiondError(
            "could not delete every private container copy: "
            + "; ".join(f"{x['store']}: {x['error']}" for x in failed if x["role"] == "private")
            + ". Nothing was forgotten locally; run forget again when the store answers")
    local = v.container_path(f.file_id)
    if v.db.has_container(f.file_id):  # overwritten in the database (secure_delete),
        v.db.drop_containers([f.file_id])  # and out of its write-ahead log below
        deleted.append({"store": "(this device)", "role": "private",
                        "object": f"{v.db.path} (containers)"})
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
    gone, waiting = release(v)  # the packs left without a member, once backed up
    v.db.purge_freed()  # the container's bytes, overwritten in the database, leave its log
    packs = private_packs + public_packs
    deleted += _pack_report([p for p in packs if _in(p, gone)], new)
    failed += [{"store": p.store, "role": p.kind, "object": p.name,
                "error": "its old pack is not deleted yet: " + next(
                    w["why"] for w in waiting if _in(p, [w]))}
               for p in packs if _in(p, waiting)]
    dead = [{"store": p.store, "role": "public", "object": p.name}
            for p in public_packs if not _in(p, gone) and not _in(p, waiting)]
    return {"file_id": f.file_id, "deleted": deleted, "deferred": failed, "in_packs": dead,
            "removed_local": [str(p) for p in removed], "left": [str(p) for p in left]}


def _packs_of(v: Archive, objs: list[ObjectRow], role: str) -> list[PackRow]:
    names = sorted({(o.store, o.name) for o in objs if o.packed and o.role == role})
    return [p for p in (v.db.pack(s, n) for s, n in names) if p is not None]


def _in(p: PackRow, items: list[dict]) -> bool:
    return any(i["store"] == p.store and i["pack"] == p.name for i in items)


def _pack_report(packs: list[PackRow], new: list[dict]) -> list[dict]:
    """Each deleted pack that held the file, and where its other members went."""
    out = []
    for p in packs:
        into = [n["pack"] for n in new if n["store"] == p.store and p.name in n["from"]]
        note = (f"pack deleted; its other members rewritten into {', '.join(into)}" if into
                else "pack deleted; it held no other member")
        out.append({"store": p.store, "role": p.kind, "object": p.name, "note": note})
    return out


def _delete_objects(v: Archive, f: FileRow, keep_public: bool) -> tuple[list[dict], list[dict]]:
    deleted: list[dict] = []
    failed: list[dict] = []
    for obj in v.db.objects(f.file_id):
        if obj.packed or (obj.role == "public" and keep_public):
            continue  # a member's name is its pack's: never deleted by name
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
