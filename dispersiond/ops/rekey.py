"""The `rekey` operation: a fresh se2 secret for one file, new public objects, the old
ones deleted.

This is how a share is revoked before its links expire: every bundle issued earlier
holds the old secret and links to the old objects, and both stop working. It cannot
claw back a copy the recipient already downloaded and opened.

Crash safety (the file is never lost):
1. the current version is decoded (every digest checked) to a temporary file in the
   state directory, and encoded again with a fresh secret into a staging folder;
2. fragments below the packing threshold go into a new pack of their own per store
   (docs/FORMAT.md §8.5), the others into objects of their own; every new name, packs'
   included, is recorded (table `rekey_plan`) before any upload, so a crash here
   leaves only objects that the next run puts in the trash;
3. one transaction swaps the object rows and the file row (and adds the new packs'
   rows), drops the plan, records the old objects in `rekey_retire` and sends the
   standalone copies behind earlier shares' links to the trash (deleted at once: those
   bundles are revoked now); then the local private container is replaced (if a crash
   comes between the two, its digest no longer matches and restore uses the new backup
   on the private stores);
4. the old objects are deleted only once a manifest backup naming the new ones has
   landed on a private store; until then they stay, and the next `rekey` (or
   `finish_retirements`) completes the revocation. An old packed member only gives up
   its reference: its pack is deleted once no member points into it (`trash_many`).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .. import digests
from ..errors import DispersiondError, IntegrityError
from ..fsutil import atomic_output, fsync_dir
from ..logs import event, log
from ..placement import new_object_name
from ..state import PROTECTED, FileState, PackRow
from ..archive import Progress, Archive
from .backup import backup_manifest, drop_all_backups_but_newest
from .encode import stage as stage_file
from .finalize import finalize
from .pack_files import BuiltPack, write_pack
from .protect import held_need
from .restore import decode_to, private_container, public_fragment
from .upload import Upload, send_all


def rekey(v: Archive, ref: str, progress: Progress | None = None) -> dict:
    """Re-encode one file under a fresh secret and retire its old objects.

    Takes the state directory for itself (call with an exclusive archive).
    """
    finish_retirements(v)
    f = v.resolve(ref)
    fid = f.file_id
    if f.state not in PROTECTED:
        raise DispersiondError(f"file {fid} is not protected yet (state {f.state})")
    if v.db.objects(fid, states=("pending",)):
        raise DispersiondError(f"file {fid} still has uploads pending: let them finish "
                               "('dispersiond put --resume' or the daemon) first")
    _abandon_plan(v, fid)
    stage = v.root / "work" / f"rekey-{fid}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(mode=0o700, parents=True)
    try:
        plain = stage / "plain"
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=stage) as tmpd:
            prf = private_container(v, f, Path(tmpd), progress)
            puf = public_fragment(v, f, Path(tmpd), progress)
            with atomic_output(plain) as out:
                decode_to(v, f, puf, prf, out)
        rows, jobs, fields, packs = _encode(v, f, plain, stage)
        plain.unlink()
        v.db.plan_rekey(fid, [(r["store"], r["name"]) for r in rows])
        failures = send_all(v, jobs, progress=progress)
        if failures:
            _abandon_plan(v, fid)
            stores = ", ".join(sorted({s for s, _ in failures}))
            raise DispersiondError(
                f"file {fid}: upload of the re-keyed objects to {stores} failed "
                f"({failures[0][1]}); nothing changed, the file and earlier shares are as "
                "before. Run rekey again when the stores answer")
        old = [(o.store, o.name) for o in v.db.objects(fid)]
        kept = ((stage / "prf").read_bytes()  # a small file's is kept in the database
                if held_need(v.cfg, f.size) is not None else None)
        with v.db.tx() as conn:
            if kept is not None:
                v.db.put_containers(conn, [(fid, kept)])
            else:
                v.db.drop_containers([fid], conn)
            v.db.drop_objects(fid, conn)
            v.db.add_packs(conn, packs)
            v.db.add_objects(conn, [{**r, "state": "uploaded"} for r in rows])
            v.db.set_state(fid, FileState.COMMITTED, conn, backed_up=0, error=None, **fields)
            v.db.drop_rekey_plan(fid, conn)
            v.db.retire(fid, old, conn)
            copies = v.db.trash_share_copies(fid, conn)
            v.db.mark_manifest_dirty(conn)
        if copies:
            v.empty_trash()  # the earlier bundles' links die now, whatever the backup does
        if kept is None:
            os.replace(stage / "prf", v.container_path(fid))
            fsync_dir(v.container_path(fid).parent)
        else:  # the old one, if it was a file
            v.container_path(fid).unlink(missing_ok=True)
        shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    done = finish_retirements(v)
    finalize(v, fid)
    v.audit("rekey", fid, new_key_id=fields["key_id"], new_objects=len(rows),
            old_objects=len(old), old_deleted=fid in done["finished"], share_copies=copies)
    event(logging.INFO, "file re-keyed", file_id=fid, objects=len(rows))
    return {"file_id": fid, "new_objects": len(rows), "new_packs": len(packs),
            "old_objects": len(old), "old_deleted": fid in done["finished"],
            "share_copies_deleted": copies, "deletions_pending": done["waiting"],
            "revocation_pending": done["pending"]}


def finish_retirements(v: Archive) -> dict:
    """Delete the old objects of re-keyed files once a manifest backup names the new ones."""
    retiring = v.db.retirements()
    res = {"finished": [], "pending": [], "waiting": 0}
    if not retiring:
        return res
    fids = list(retiring)
    if v.db.manifest_dirty() and not backup_manifest(v):
        log.warning("no private store took a manifest backup: the old objects of re-keyed "
                    "file(s) %s stay until one does (earlier shares still open until then)",
                    ", ".join(fids))
        res["pending"] = fids
        return res
    v.db.trash_retired(retiring)
    drop_all_backups_but_newest(v)  # older backups name the objects about to go
    _, res["waiting"] = v.empty_trash()
    res["finished"] = fids
    return res


def _abandon_plan(v: Archive, fid: str) -> None:
    """Objects uploaded by a rekey that never committed: to the trash with them."""
    if v.db.abandon_rekey_plan(fid):
        v.empty_trash()


def _encode(v: Archive, f, plain: Path,
            stage: Path) -> tuple[list[dict], list[Upload], dict, list[PackRow]]:
    """Encode `plain` with a fresh secret into `stage`, as protect lays objects out: the
    object rows, their uploads (fresh names; a small fragment's is a new pack of its
    own), the file's new layout columns and the new packs' rows."""
    with open(plain, "rb") as src:
        st = stage_file(v, src, stage, stage / "prf")
    # A file re-keyed to another digest algorithm (the config's) is checked under its old one.
    same = (st.digest == f.digest if st.alg == f.digest_alg
            else digests.of_path(f.digest_alg, plain) == f.digest)
    if not same or st.size != f.size:
        raise IntegrityError(f"file {f.file_id}: the decoded bytes changed while re-keying")
    rows, jobs, packs = [], [], []
    for row, path in st.rows(v.cfg, f.file_id):
        if row["object_size"] < v.cfg.pack.threshold:  # as ops/packing.packable decides
            row, built = _pack_one(v, row, path, st.alg, stage)
            packs.append(built.row)
            jobs.append(built.upload())
        else:
            jobs.append(Upload(f.file_id, row["store"], row["name"], path, row["object_size"],
                               row["digest"], st.alg, resumable=False))
        rows.append(row)
    return rows, jobs, st.file_fields(v.cfg, v.key), packs


def _pack_one(v: Archive, row: dict, path: Path, alg: str, stage: Path) -> tuple[dict, BuiltPack]:
    """A new pack holding one staged fragment (checked against the digest its encode
    made), and the fragment's row pointing into it."""
    data = path.read_bytes()
    if len(data) != row["object_size"] or digests.of(alg, data) != row["digest"]:
        raise IntegrityError(f"file {row['file_id']}: a staged object changed while "
                             "re-keying (damaged on local disk); nothing changed, run rekey "
                             "again")
    name = new_object_name()
    built = write_pack(v.key, row["store"], name, row["role"], alg, v.cfg.public.pad,
                       [(row["file_id"], data[:row["length"]])], stage / f"pack-{name}")
    (m,) = built.members
    return {**row, "name": name, "offset": m.offset, "length": m.length,
            "object_size": built.row.size, "digest": m.digest,
            "pack_digest": built.row.digest}, built
