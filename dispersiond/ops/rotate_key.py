"""The `rotate-key` operation: a new master key. Every private container (local and on the
private stores) is re-wrapped, the manifest backups re-sealed, the audit chain re-keyed;
no standalone public object is touched. Packs are keyed from the master key, so each is
written again under the new one (rotate_packs.py): packed containers into new private
packs, public members, unchanged, into re-masked packs. Resumable after a crash at any
point."""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from .. import scratch
from .. import audit, digests
from ..codec import se2
from ..errors import DispersiondError
from ..fsutil import atomic_output
from ..keys import KEY_LEN, derive_key, key_id, write_key_file
from ..logs import log
from .backup import backup_manifest, drop_all_backups_but_newest
from ..state import PROTECTED, FileState
from ..archive import Progress, Archive
from .restore import private_container
from .rotate_packs import remask_public, repack_private
from .upload import replace_copy


_SALT_LINE = r"(\bsalt:[ \t]*[\"']?){}(?![0-9a-fA-F])"


def _new_key(v: Archive, new_passphrase: Callable[[], bytes] | None,
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


def rotate_key(v: Archive, progress: Progress | None = None,
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
                "deletions_pending": waiting, "public_objects_rewritten": 0,
                "public_packs_remasked": 0, "packed_members_unreadable": 0}
    new_key, install = got
    old_key, new_id = v.key, se2.key_id(new_key).hex()
    public_before = _standalone_public(v)
    rewrapped = uploaded = 0
    containers: dict[str, str] = {}  # file id -> digest of its re-wrapped container
    for f in v.db.files_in(FileState.ENCODED, *PROTECTED):
        data = v.container(f.file_id)
        if data is None:  # the device lost its copy: the trusted store's, kept here again
            local = v.container_path(f.file_id)
            with scratch.folder(v.root / "work", "rotate") as tmpd:
                os.replace(private_container(v, f, Path(tmpd), progress), local)
            data = local.read_bytes()
        if data[36:44] != bytes.fromhex(new_id):
            head = se2.rewrap(data[: se2.PRF_HEADER_LEN], old_key, new_key)
            data = head + data[se2.PRF_HEADER_LEN:]
            v.keep_container(f.file_id, data)
            rewrapped += 1
        digest = digests.of(f.digest_alg, data)
        v.db.update_file(f.file_id, key_id=new_id, container_digest=digest)
        containers[f.file_id] = digest
        for obj in v.db.objects(f.file_id, role="private"):
            if obj.packed or (obj.digest == digest and obj.state == "uploaded"):
                continue  # packed: below, with the others; else already the new wrap
            replace_copy(v, obj, v.container_file(f.file_id), digest)
            uploaded += 1
    uploaded += repack_private(v, new_key, containers)
    with scratch.folder(v.root / "work", "rotate") as tmpd:
        remasked, unreadable = remask_public(v, old_key, new_key, Path(tmpd))
    rechained = audit.rechain(v.db, old_key, new_key)  # the audit MAC key derives from it
    if not rechained:
        log.warning("the audit log does not verify under the old key; it is left as it is "
                    "(see 'dispersiond audit verify')")
    from ..share import device

    device.rewrap(v.root, old_key, new_key)  # before the backup below, which carries it
    v.key = new_key
    v.db.mark_manifest_dirty()
    if not backup_manifest(v, force=True):
        raise DispersiondError("no private store took the re-sealed manifest; the rotation "
                               "is not finished: run rotate-key again when a store answers")
    drop_all_backups_but_newest(v)
    install()
    deleted, waiting = v.empty_trash()
    public_after = _standalone_public(v)
    v.audit("rotate-key", None, new_key_id=new_id, containers=rewrapped,
            audit_rechained=rechained, public_packs_remasked=remasked)
    return {"new_key_id": new_id, "containers_rewrapped": rewrapped,
            "private_backups_rewritten": uploaded, "old_objects_deleted": deleted,
            "deletions_pending": waiting,
            "public_objects_rewritten": len(public_after - public_before),
            "public_packs_remasked": remasked, "packed_members_unreadable": unreadable}


def _standalone_public(v: Archive) -> set[tuple[str, str, str]]:
    """(store, name, digest) of every standalone public object: rotation never rewrites one."""
    return {(o.store, o.name, o.digest) for o in v.db.objects(None, role="public")
            if not o.packed}


