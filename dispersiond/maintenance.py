"""Manifest backups and `recover`: sealing the state to the private stores, and rebuilding
a blank state from there. (The other upkeep operations each have a module in ops/.)"""
from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

from backends import StoreError

from . import manifest
from .errors import DispersiondError
from .logs import event, log
from .placement import new_object_name
from .vault import Progress, Vault


# --------------------------------------------------------------- manifest backups

def backup_manifest(v: Vault, force: bool = False) -> int:
    """Seal the manifest and put it on every private store; returns how many stores took it.

    Older backups beyond the newest few are deleted. Files included are marked
    backed up (the daemon deletes an original only after that).
    """
    if not force and not v.db.manifest_dirty():
        return 0
    seq = v.db.manifest_seq() + 1
    included = [f.file_id for f in v.db.protected_files()]
    from .share import device

    seed = device.seed_for_backup(v.root, v.key)
    blob = manifest.seal(v.key, manifest.snapshot(v.db, seq, seed))
    ok = 0
    for store in v.cfg.private.stores:
        name = f"{manifest.PREFIX}{new_object_name()}"
        try:
            v.store(store).put(name, io.BytesIO(blob), len(blob))
        except StoreError as exc:
            v.db.store_error(store, str(exc))
            log.warning("manifest backup to store %s failed: %s", store, exc)
            continue
        ok += 1
        v.db.store_ok(store)
        v.db.record_backup(store, seq, name)
        _prune_backups(v, store)
    if ok:
        v.db.manifest_backed_up(seq, included)
        event(logging.INFO, "manifest backed up", seq=seq, stores=ok, files=len(included))
    return ok


def _backups(v: Vault, store: str) -> list[tuple[int, str]]:
    return v.db.backups(store)


def _prune_backups(v: Vault, store: str, keep: int = manifest.KEEP_BACKUPS) -> None:
    items = _backups(v, store)
    old, kept = items[:-keep] if keep else items, items[-keep:] if keep else []
    for _, name in old:
        v.discard(store, name)
    v.db.set_backups(store, kept)
    v.empty_trash()


def drop_all_backups_but_newest(v: Vault) -> None:
    """After forget or rotation: older backups still name the file or use the old key."""
    for store in v.cfg.private.stores:
        _prune_backups(v, store, keep=1)



# --------------------------------------------------------------- recover

def recover(v: Vault, progress: Progress | None = None) -> dict:
    """Rebuild a blank state from the newest manifest backup on the private stores."""
    if v.db.has_files():
        raise DispersiondError(f"the state database in {v.root} already holds files; recover "
                               "only into an empty state directory")
    best, errors = None, []
    for store in v.cfg.private.stores:
        try:
            names = [n for n in v.store(store).list(manifest.PREFIX)]
        except StoreError as exc:
            errors.append(f"{store}: {exc}")
            continue
        for name in names:
            try:
                doc = manifest.open_sealed(v.key, v.store(store).get_bytes(name))
            except (StoreError, DispersiondError) as exc:
                errors.append(f"{store}/{name}: {exc}")
                continue
            if best is None or doc["seq"] > best[0]["seq"]:
                best = (doc, store, name)
    if best is None:
        raise DispersiondError("no readable manifest backup on any private store"
                               + (f" ({'; '.join(errors)})" if errors else ""))
    doc, store, name = best
    count = manifest.load_into(v.db, doc)
    from .share import device

    device.restore_from_backup(v.root, v.key, doc)
    v.db.set_backups(store, [(doc["seq"], name)])
    from .ops.restore import private_container

    fetched = 0
    with tempfile.TemporaryDirectory(prefix=".recover-", dir=v.root / "work") as tmpd:
        for f in v.db.files():
            src = private_container(v, f, Path(tmpd), progress)
            if src != v.prf_path(f.file_id):
                os.replace(src, v.prf_path(f.file_id))
                fetched += 1
    v.db.mark_manifest_clean()
    v.db.mark_backed_up()
    v.audit("recover", None, files=count, manifest_seq=doc["seq"])
    return {"files": count, "manifest_seq": doc["seq"], "from_store": store,
            "private_containers_fetched": fetched, "unreadable_backups": errors}
