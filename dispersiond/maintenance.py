"""Keeping protected files healthy: manifest backups, verify, repair, recover,
key rotation and crypto-erasure (forget)."""
from __future__ import annotations

import io
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backends import AlreadyExists, NotFound, StoreError, Unavailable

from . import audit, digests, manifest
from .codec import se2
from .errors import DispersiondError, IntegrityError
from .fsutil import Discard, atomic_output
from .keys import KEY_LEN, derive_key, key_id, write_key_file
from .logs import event, log
from .placement import HashingWriter, new_object_name, rebuild_shards
from .restore import fetch_object, first_intact, gather_shards, private_container
from .state import PROTECTED, FileState, ObjectRow
from .ops.backup import (_backups, _prune_backups, backup_manifest,  # noqa: F401 - re-exports
                         drop_all_backups_but_newest)
from .ops.recover import recover  # noqa: F401 - re-export
from .vault import Progress, Vault


# --------------------------------------------------------------- manifest backups
# (in ops/backup.py and ops/recover.py; re-exported here for the callers that import them)

def finalize(v: Vault, fid: str) -> bool:
    """committed -> done once every object is confirmed and a manifest backup holds it."""
    return bool(finalize_many(v, [fid]))


def finalize_many(v: Vault, fids) -> list[str]:
    """`finalize` for many files in one transaction, each checked inside it; returns
    the ids now done."""
    return v.db.finish_many(fids)


# --------------------------------------------------------------- verify

@dataclass
class Finding:
    file_id: str
    store: str
    object: str
    role: str
    shard: int | None
    problem: str  # missing | corrupt | wrong-size | checksum-mismatch | unreachable

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class VerifyReport:
    files: int = 0
    objects: int = 0
    ok: int = 0
    findings: list[Finding] = field(default_factory=list)
    unrestorable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": self.files, "objects": self.objects, "ok": self.ok,
                "problems": [f.as_dict() for f in self.findings],
                "unrestorable": self.unrestorable}


def verify(v: Vault, deep: bool = False, progress: Progress | None = None,
           files: list[str] | None = None) -> VerifyReport:
    """Shallow: stat every object (size, the store's own SHA-256 where it has one).
    Deep: download every object and check its SHA-256."""
    rep = VerifyReport()
    rows = v.db.protected_files()
    if files is not None:
        rows = [f for f in rows if f.file_id in files]
    for f in rows:
        rep.files += 1
        good_pub = good_prv = 0
        for obj in v.db.objects(f.file_id, not_state="pending"):
            rep.objects += 1
            problem = _check(v, obj, deep, progress)
            if problem is None:
                rep.ok += 1
                good_pub += obj.role == "public"
                good_prv += obj.role == "private"
                if obj.state != "uploaded":
                    v.db.set_object_state(obj.id, "uploaded")
                continue
            rep.findings.append(Finding(f.file_id, obj.store, obj.name, obj.role, obj.shard,
                                        problem))
            if problem in ("missing", "corrupt", "wrong-size", "checksum-mismatch"):
                v.db.set_object_state(obj.id, "corrupt" if problem != "missing" else "missing")
        need = f.k if f.public_mode == "erasure" else 1
        local = v.prf_path(f.file_id).exists()
        if good_pub < need or not (good_prv or local):
            rep.unrestorable.append(f.file_id)
    return rep


def _check(v: Vault, obj: ObjectRow, deep: bool, progress: Progress | None) -> str | None:
    if obj.store in v.down:  # answered Unavailable earlier in this run: do not wait again
        return "unreachable"
    try:
        if deep:
            fetch_object(v, obj, Discard(), progress)
            return None
        info = v.store(obj.store).stat(obj.name)
    except NotFound:
        return "missing"
    except IntegrityError:
        return "corrupt"
    except StoreError as exc:
        v.db.store_error(obj.store, str(exc))
        if isinstance(exc, Unavailable):
            v.down.add(obj.store)
        return "unreachable"
    v.db.store_ok(obj.store)
    if info.size != obj.object_size:
        return "wrong-size"
    theirs = info.checksums.get(obj.digest_alg)
    if theirs and theirs != obj.digest:
        return "checksum-mismatch"
    return None


# --------------------------------------------------------------- repair

@dataclass
class RepairReport:
    repaired: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"repaired": self.repaired, "failed": self.failed}


def repair(v: Vault, deep: bool = False, progress: Progress | None = None) -> RepairReport:
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


def _rebuild(v: Vault, f, obj: ObjectRow, tmp: Path, progress: Progress | None) -> None:
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
    digest = digests.of_path(f.digest_alg, src)
    with open(src, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        name = new_object_name()
        try:
            v.store(obj.store).put(name, fh, size)
        except AlreadyExists:  # 128-bit random names: only a bug gets here
            raise IntegrityError(f"store {obj.store!r}: fresh object name already taken") from None
    v.db.replace_object(obj, name, digest, object_size=size, checked=time.time())
    event(logging.INFO, "copy rebuilt", file_id=f.file_id, store=obj.store, role=obj.role)


def _good_replica(v: Vault, f, tmp: Path, progress: Progress | None) -> Path:
    errors: list[str] = []
    got = first_intact(v, v.db.objects(f.file_id, role="public", states=("uploaded",)), tmp,
                       "replica", errors, progress)
    if got:
        return got[1]
    raise DispersiondError(f"file {f.file_id}: no intact replica to copy from ({'; '.join(errors)})")


def _rebuilt_shard(v: Vault, f, obj: ObjectRow, tmp: Path, progress: Progress | None) -> Path:
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


# --------------------------------------------------------------- rotate-key

_SALT_LINE = r"(\bsalt:[ \t]*[\"']?){}(?![0-9a-fA-F])"


def _new_key(v: Vault, new_passphrase: Callable[[], bytes] | None,
             config_path: Path | None) -> tuple[bytes, Callable[[], None]] | None:
    """The key to rotate to, and what makes it the configured one once everything is
    re-wrapped; None if an interrupted passphrase rotation had already got that far.

    A key file: a new random key, kept in KEY.new until the end. A passphrase: a new
    salt, kept in the state database until the config file carries it (the config is
    rewritten before that record is dropped, so a crash never loses the salt)."""
    k = v.cfg.key
    if k.file is not None:
        key_path = v.cfg.path(k.file)
        new_path = key_path.with_name(key_path.name + ".new")
        new_key = new_path.read_bytes() if new_path.exists() else write_key_file(new_path)
        if len(new_key) != KEY_LEN:
            raise DispersiondError(f"{new_path} is damaged; delete it and run rotate-key again")
        return new_key, lambda: os.replace(new_path, key_path)
    salt, want = v.db.rotation()
    if salt is not None and salt == k.salt:  # config already rewritten: only tidy up
        v.db.end_rotation()
        return None
    if new_passphrase is None or config_path is None:
        raise DispersiondError("a passphrase key is rotated to a new passphrase: set "
                               "DISPERSIOND_NEW_PASSPHRASE or run rotate-key in a terminal")
    text = config_path.read_text()
    if len(re.findall(_SALT_LINE.format(k.salt), text)) != 1:
        raise DispersiondError(f"{config_path}: cannot find the line 'salt: {k.salt}' to update; "
                               "nothing was changed")
    phrase = new_passphrase()  # asked for only now, when it is really needed
    if salt is None:
        salt = os.urandom(16).hex()
        v.db.set_rotation_salt(salt)
    new_key = derive_key(phrase, bytes.fromhex(salt), k.kdf)
    if want is None:
        v.db.set_rotation_key_id(key_id(new_key))
    elif want != key_id(new_key):
        raise DispersiondError("an interrupted rotation began with another new passphrase: "
                               "give that one again")

    def install() -> None:
        with atomic_output(config_path, mode=stat.S_IMODE(config_path.stat().st_mode)) as out:
            out.write(re.sub(_SALT_LINE.format(k.salt), lambda m: m.group(1) + salt,
                             text).encode())
        v.db.end_rotation()

    return new_key, install


def rotate_key(v: Vault, progress: Progress | None = None,
               new_passphrase: Callable[[], bytes] | None = None,
               config_path: Path | None = None) -> dict:
    """New master key: re-wrap every private container (local and backups) and re-seal the
    manifest backups. Public objects are not touched. Resumable after a crash.

    For a passphrase key, `new_passphrase` is called for the new one if it is needed."""
    got = _new_key(v, new_passphrase, config_path)
    if got is None:  # the config already names the new key: finish what came after that
        deleted, waiting = v.empty_trash()
        v.audit("rotate-key", None, new_key_id=key_id(v.key), containers=0,
                audit_rechained=True)
        return {"new_key_id": key_id(v.key), "containers_rewrapped": 0,
                "private_backups_rewritten": 0, "old_objects_deleted": deleted,
                "deletions_pending": waiting, "public_objects_rewritten": 0}
    new_key, install = got
    old_key, new_id = v.key, se2.key_id(new_key).hex()
    public_before = {(o.store, o.name, o.digest) for o in v.db.objects(None, role="public")}
    rewrapped = uploaded = 0
    for f in v.db.files_in(FileState.ENCODED, *PROTECTED):
        local = v.prf_path(f.file_id)
        with tempfile.TemporaryDirectory(prefix=".rotate-", dir=v.root / "work") as tmpd:
            if not local.exists():
                os.replace(private_container(v, f, Path(tmpd), progress), local)
        data = local.read_bytes()
        if data[36:44] != bytes.fromhex(new_id):
            head = se2.rewrap(data[: se2.PRF_HEADER_LEN], old_key, new_key)
            data = head + data[se2.PRF_HEADER_LEN:]
            with atomic_output(local) as out:
                out.write(data)
            rewrapped += 1
        digest = digests.of(f.digest_alg, data)
        v.db.update_file(f.file_id, key_id=new_id, container_digest=digest)
        for obj in v.db.objects(f.file_id, role="private"):
            if obj.digest == digest and obj.state == "uploaded":
                continue  # this backup already carries the new wrap
            name = new_object_name()
            v.store(obj.store).put(name, io.BytesIO(data), len(data))
            v.db.replace_object(obj, name, digest)
            uploaded += 1
    rechained = audit.rechain(v.db, old_key, new_key)  # the audit MAC key derives from it
    if not rechained:
        log.warning("the audit log does not verify under the old key; it is left as it is "
                    "(see 'dispersiond audit verify')")
    from .share import device

    device.rewrap(v.root, old_key, new_key)  # before the backup below, which carries it
    v.key = new_key
    v.db.mark_manifest_dirty()
    if not backup_manifest(v, force=True):
        raise DispersiondError("no private store took the re-sealed manifest; the rotation "
                               "is not finished: run rotate-key again when a store answers")
    drop_all_backups_but_newest(v)
    install()
    deleted, waiting = v.empty_trash()
    public_after = {(o.store, o.name, o.digest) for o in v.db.objects(None, role="public")}
    v.audit("rotate-key", None, new_key_id=new_id, containers=rewrapped,
            audit_rechained=rechained)
    return {"new_key_id": new_id, "containers_rewrapped": rewrapped,
            "private_backups_rewritten": uploaded, "old_objects_deleted": deleted,
            "deletions_pending": waiting,
            "public_objects_rewritten": len(public_after - public_before)}


# --------------------------------------------------------------- forget

def forget(v: Vault, ref: str, keep_public: bool = False) -> dict:
    """Crypto-erasure: delete every copy of the private container, the manifest entry,
    and (unless keep_public) the public objects. Without the container the public
    bytes are noise to everyone, the user included."""
    f = v.resolve(ref)
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
    if any(x["role"] == "private" for x in failed):
        raise DispersiondError(
            "could not delete every private container copy: "
            + "; ".join(f"{x['store']}: {x['error']}" for x in failed if x["role"] == "private")
            + ". Nothing was forgotten locally; run forget again when the store answers")
    local = v.prf_path(f.file_id)
    if local.exists():
        local.unlink()
        deleted.append({"store": "(this device)", "role": "private", "object": str(local)})
    import shutil

    shutil.rmtree(v.work_dir(f.file_id), ignore_errors=True)
    with v.db.tx() as conn:
        # public copies on a store that is down: delete later
        v.db.trash_many([(x["store"], x["object"]) for x in failed], conn)
        v.db.delete_file(f.file_id, conn)
        v.db.mark_manifest_dirty(conn)
    v.audit("forget", f.file_id, keep_public=keep_public)
    backup_manifest(v, force=True)
    drop_all_backups_but_newest(v)
    return {"file_id": f.file_id, "deleted": deleted, "deferred": failed}
