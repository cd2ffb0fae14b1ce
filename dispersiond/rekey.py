"""Re-keying one file: a fresh se2 secret, new public objects, the old ones deleted.

This is how a share is revoked before its links expire: every bundle issued earlier
holds the old secret and links to the old objects, and both stop working. It cannot
claw back a copy the recipient already downloaded and opened.

Crash safety (the file is never lost):
1. the current version is decoded (every digest checked) to a temporary file in the
   state directory, and encoded again with a fresh secret into a staging folder;
2. the new objects' names are recorded (meta `rekey_plan:<id>`) before any upload, so
   a crash here leaves only objects that the next run puts in the trash;
3. one transaction swaps the object rows and the file row, drops the plan and records
   the old objects as `rekey_retire:<id>`; then the local private container is
   replaced (if a crash comes between the two, its digest no longer matches and restore
   uses the new backup on the private stores);
4. the old objects are deleted only once a manifest backup naming the new ones has
   landed on a private store; until then they stay, and the next `rekey` (or
   `finish_retirements`) completes the revocation.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backends import AlreadyExists, StoreError

from . import codec
from .codec import se2
from .errors import DispersiondError, IntegrityError
from .formats import PROBE, head_len
from .fsutil import atomic_output, fsync_dir
from .logs import event, log
from .maintenance import backup_manifest, drop_all_backups_but_newest, finalize
from .placement import (DEFAULT_BLOCK, HashingWriter, ShardWriter, new_object_name, padded,
                        shard_length)
from .protect import HashingReader, Throttle, UploadReader
from .restore import decode_to, private_container, public_fragment
from .state import dumps
from .vault import Progress, Vault

PLAN = "rekey_plan:"
RETIRE = "rekey_retire:"


def rekey(v: Vault, ref: str, progress: Progress | None = None) -> dict:
    """Re-encode one file under a fresh secret and retire its old objects.

    Takes the state directory for itself (call with an exclusive vault).
    """
    finish_retirements(v)
    f = v.resolve(ref)
    fid = f.file_id
    if f.state not in ("committed", "done"):
        raise DispersiondError(f"file {fid} is not protected yet (state {f.state})")
    if v.db.objects(fid, "state='pending'"):
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
        rows, staged, fields = _encode(v, f, plain, stage)
        plain.unlink()
        v.db.set_meta(PLAN + fid, dumps([[r["store"], r["name"]] for r in rows]))
        failures = _upload(v, rows, staged, progress)
        if failures:
            _abandon_plan(v, fid)
            stores = ", ".join(sorted({s for s, _ in failures}))
            raise DispersiondError(
                f"file {fid}: upload of the re-keyed objects to {stores} failed "
                f"({failures[0][1]}); nothing changed, the file and earlier shares are as "
                "before. Run rekey again when the stores answer")
        old = [[o.store, o.name] for o in v.db.objects(fid)]
        with v.db.tx() as conn:
            conn.execute("DELETE FROM objects WHERE file_id=?", (fid,))
            v.db.add_objects(conn, [{**r, "state": "uploaded"} for r in rows])
            v.db.update_file(fid, conn, state="committed", backed_up=0, error=None, **fields)
            conn.execute("DELETE FROM meta WHERE key=?", (PLAN + fid,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (RETIRE + fid, dumps(old)))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest_dirty', '1')")
        os.replace(staged["prf"], v.prf_path(fid))
        fsync_dir(v.prf_path(fid).parent)
        shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    done = finish_retirements(v)
    finalize(v, fid)
    v.audit("rekey", fid, new_key_id=fields["key_id"], new_objects=len(rows),
            old_objects=len(old), old_deleted=fid in done["finished"])
    event(logging.INFO, "file re-keyed", file_id=fid, objects=len(rows))
    return {"file_id": fid, "new_objects": len(rows), "old_objects": len(old),
            "old_deleted": fid in done["finished"], "deletions_pending": done["waiting"],
            "revocation_pending": done["pending"]}


def finish_retirements(v: Vault) -> dict:
    """Delete the old objects of re-keyed files once a manifest backup names the new ones."""
    rows = v.db.query("SELECT key, value FROM meta WHERE key LIKE ?", (RETIRE + "%",))
    res = {"finished": [], "pending": [], "waiting": 0}
    if not rows:
        return res
    fids = [r["key"][len(RETIRE):] for r in rows]
    if v.db.get_meta("manifest_dirty", "1") != "0" and not backup_manifest(v):
        log.warning("no private store took a manifest backup: the old objects of re-keyed "
                    "file(s) %s stay until one does (earlier shares still open until then)",
                    ", ".join(fids))
        res["pending"] = fids
        return res
    with v.db.tx() as conn:
        for r in rows:
            for store, name in json.loads(r["value"]):
                conn.execute("INSERT OR IGNORE INTO trash VALUES (?, ?, strftime('%s','now'))",
                             (store, name))
            conn.execute("DELETE FROM meta WHERE key=?", (r["key"],))
    drop_all_backups_but_newest(v)  # older backups name the objects about to go
    _, res["waiting"] = v.empty_trash()
    res["finished"] = fids
    return res


def _abandon_plan(v: Vault, fid: str) -> None:
    """Objects uploaded by a rekey that never committed: to the trash with them."""
    raw = v.db.get_meta(PLAN + fid)
    if raw is None:
        return
    with v.db.tx() as conn:
        for store, name in json.loads(raw):
            conn.execute("INSERT OR IGNORE INTO trash VALUES (?, ?, strftime('%s','now'))",
                         (store, name))
        conn.execute("DELETE FROM meta WHERE key=?", (PLAN + fid,))
    v.empty_trash()


def _encode(v: Vault, f, plain: Path, stage: Path) -> tuple[list[dict], dict, dict]:
    """Encode `plain` with a fresh secret into `stage`, as protect.encode lays objects out."""
    cfg, pol = v.cfg, v.cfg.public
    with open(plain, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        hl = head_len(src.read(PROBE), size, cfg.dicom_header)
        src.seek(0)
        reader = HashingReader(src)
        if pol.mode == "replicate":
            outs = [HashingWriter(open(stage / "puf", "wb"))]
            sink = outs[0]
        else:
            outs = [HashingWriter(open(stage / f"shard-{i}", "wb")) for i in range(pol.n)]
            sink = ShardWriter(pol.k, pol.n, outs, DEFAULT_BLOCK)
        try:
            with open(stage / "prf", "wb") as prf_file:
                prf = HashingWriter(prf_file)
                enc = codec.encode_stream("se2", v.key, reader, size, sink, prf, head_len=hl)
                prf_file.flush()
                os.fsync(prf_file.fileno())
            if pol.mode == "erasure":
                sink.close()
            for o in outs:
                o.pad_random(padded(o.n, pol.pad))
                o.f.flush()
                os.fsync(o.f.fileno())
        finally:
            for o in outs:
                o.f.close()
    if reader.h.hexdigest() != f.sha256 or size != f.size:
        raise IntegrityError(f"file {f.file_id}: the decoded bytes changed while re-keying")
    rows, staged = [], {"prf": stage / "prf"}
    if pol.mode == "replicate":
        for store in pol.stores[: pol.n]:
            rows.append(dict(file_id=f.file_id, role="public", shard=None, store=store,
                             name=new_object_name(), length=enc.puf_len, object_size=outs[0].n,
                             sha256=outs[0].hexdigest()))
            staged[rows[-1]["name"]] = stage / "puf"
    else:
        slen = shard_length(enc.puf_len, pol.k, DEFAULT_BLOCK)
        for i, store in enumerate(pol.stores):
            rows.append(dict(file_id=f.file_id, role="public", shard=i, store=store,
                             name=new_object_name(), length=slen, object_size=outs[i].n,
                             sha256=outs[i].hexdigest()))
            staged[rows[-1]["name"]] = stage / f"shard-{i}"
    for store in cfg.private.stores:
        rows.append(dict(file_id=f.file_id, role="private", shard=None, store=store,
                         name=new_object_name(), length=enc.prf_len, object_size=enc.prf_len,
                         sha256=prf.hexdigest()))
        staged[rows[-1]["name"]] = stage / "prf"
    fields = dict(size=size, sha256=reader.h.hexdigest(), head_len=hl,
                  chunk_log2=se2.DEFAULT_CHUNK_LOG2, puf_len=enc.puf_len, prf_len=enc.prf_len,
                  prf_sha256=prf.hexdigest(), key_id=se2.key_id(v.key).hex(),
                  public_mode=pol.mode, k=pol.k if pol.mode == "erasure" else None, n=pol.n,
                  block=DEFAULT_BLOCK if pol.mode == "erasure" else None)
    return rows, staged, fields


def _upload(v: Vault, rows: list[dict], staged: dict, progress: Progress | None
            ) -> list[tuple[str, Exception]]:
    throttle = Throttle(v.cfg.schedule.bandwidth())
    failures: list[tuple[str, Exception]] = []

    def one(r: dict) -> None:
        try:
            store = v.store(r["store"])
            with open(staged[r["name"]], "rb") as fh:
                try:
                    store.put(r["name"], UploadReader(fh, throttle, progress), r["object_size"])
                except AlreadyExists:  # 128-bit random names: only a bug gets here
                    raise IntegrityError(f"store {r['store']!r}: fresh object name taken") from None
            v.db.store_ok(r["store"])
        except (StoreError, OSError, IntegrityError, KeyError) as exc:
            v.db.store_error(r["store"], str(exc))
            failures.append((r["store"], exc))

    with ThreadPoolExecutor(max_workers=min(v.cfg.upload_workers, len(rows))) as ex:
        list(ex.map(one, rows))
    return failures
