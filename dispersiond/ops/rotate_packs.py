"""Packs under a new master key (`rotate-key`, docs/FORMAT.md §8.5).

A pack's mask and its sealed index are keyed from the master key (§8.1, §8.3), so a
pack does not open under a new one: rotation writes every pack again, under the new key
and a new name. Private packs are made from the re-wrapped containers this device keeps
(nothing is downloaded). A public pack is fetched once, each member unmasked under the
old key and checked against its digest, and written again: the members' bytes do not
change, only the mask, the index and the name. Each new pack is committed with its
members re-pointed at it in one transaction; an old pack goes to the trash once no
member points into it (`trash_many`).

Resumable: a private member already re-packed carries its file's new container digest;
a public pack already re-masked opens under the new key and is left as it is.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from backends import NotFound, StoreError

from .. import digests
from ..errors import DispersiondError, FormatError, IntegrityError
from ..logs import event
from ..pack import extract, open_index
from ..placement import new_object_name
from ..state import ObjectRow, PackRow, PlacedMember
from ..archive import Archive
from .pack_files import write_pack
from .upload import Throttle, send

Members = Callable[[], Iterator[tuple[ObjectRow, bytes]]]


def repack_private(v: Archive, new_key: bytes, containers: dict[str, str]) -> int:
    """Every packed private member of the files in `containers` (file id -> digest of its
    re-wrapped container) that does not hold that container yet, into new private packs
    (per store, up to `pack_size`); returns how many members were re-packed."""
    todo = [o for o in v.db.objects(None, role="private")
            if o.packed and o.file_id in containers and o.digest != containers[o.file_id]]
    groups: dict[tuple[str, str], list[list[ObjectRow]]] = {}
    for o in todo:
        packs = groups.setdefault((o.store, o.digest_alg or ""), [[]])
        if sum(m.length for m in packs[-1]) >= v.cfg.pack.pack_size:
            packs.append([])
        packs[-1].append(o)
    for (store, alg), packs in groups.items():
        for objs in packs:
            def members(objs=objs) -> Iterator[tuple[ObjectRow, bytes]]:
                for o in objs:
                    data = v.container(o.file_id)
                    if data is None or digests.of(alg, data) != containers[o.file_id]:
                        raise DispersiondError(
                            f"file {o.file_id}: its re-wrapped private container changed on "
                            "local disk during the rotation; run rotate-key again")
                    yield o, data

            _send(v, new_key, store, "private", alg, members)
    return len(todo)


def remask_public(v: Archive, old_key: bytes, new_key: bytes, tmp: Path) -> tuple[int, int]:
    """Every public pack still under the old key, written again under the new one; returns
    (packs re-masked, members that could not be read: marked missing or corrupt, for
    repair to rebuild from the other stores)."""
    remasked = unreadable = 0
    for pack in v.db.packs(kind="public"):
        objs = v.db.pack_members(pack.store, pack.name)
        if not objs:
            continue  # nothing points into it: the trash or the sweep deletes it
        path = tmp / f"pack-{pack.name}"
        bad: list[ObjectRow] = []
        try:
            _download(v, pack, path)
            with open(path, "rb") as fh:
                def read(offset: int, length: int) -> bytes:
                    fh.seek(offset)
                    return fh.read(length)

                if _under(new_key, pack, read):
                    continue  # re-masked by an earlier, interrupted rotation

                def members() -> Iterator[tuple[ObjectRow, bytes]]:
                    for o in objs:
                        try:
                            yield o, extract(read, o.offset, o.length, master_key=old_key,
                                             name=pack.name, digest=o.digest,
                                             digest_alg=o.digest_alg or "")
                        except (IntegrityError, FormatError):
                            bad.append(o)  # left pointing at the old pack, marked below

                if _send(v, new_key, pack.store, "public", pack.digest_alg, members):
                    remasked += 1
        except NotFound:
            v.db.set_pack_state(pack.store, pack.name, "missing")
            unreadable += len(objs)
            continue
        finally:
            path.unlink(missing_ok=True)
        for o in bad:
            v.db.set_object_state(o.id, "corrupt")
        unreadable += len(bad)
        if bad:
            event(logging.WARNING, "packed members unreadable while rotating the key",
                  store=pack.store, members=len(bad))
    return remasked, unreadable


def _under(key: bytes, pack: PackRow, read) -> bool:
    """Does the pack's sealed index open under `key` (its tag decides)?"""
    try:
        open_index(key, pack.name, read, pack.size)
        return True
    except (IntegrityError, FormatError):
        return False


def _download(v: Archive, pack: PackRow, path: Path) -> None:
    try:
        with open(path, "wb") as fo:
            for chunk in v.store(pack.store).get(pack.name):
                fo.write(chunk)
    except NotFound:
        raise
    except StoreError as exc:
        raise _unfinished(pack.store, exc) from None


def _send(v: Archive, key: bytes, store: str, kind: str, alg: str,
          members: Members) -> PackRow | None:
    """Write, upload and commit one pack of `members` under `key` (its name planned first);
    the names the members pointed at before are released in the same transaction. None if
    `members` yielded nothing (no empty pack is stored)."""
    name = new_object_name()
    path = v.root / "work" / f"pack-{name}"
    placed: list[PlacedMember] = []
    rows = []

    def tracked() -> Iterator[tuple[str, bytes]]:
        for o, data in members():
            rows.append(o)
            yield o.file_id, data

    v.db.plan_pack(store, name)
    try:
        built = write_pack(key, store, name, kind, alg, v.cfg.public.pad, tracked(), path)
        if not rows:  # every member failed to read
            v.db.abandon_pack(store, name)
            return None
        send(v, built.upload(), Throttle(None))  # maintenance traffic, as replace_copy's
        placed = [PlacedMember(o.id, m.offset, m.length, m.digest)
                  for o, m in zip(rows, built.members)]
        v.db.commit_pack(built.row, placed, release={(o.store, o.name) for o in rows})
    except StoreError as exc:
        v.db.abandon_pack(store, name)
        raise _unfinished(store, exc) from None
    except BaseException:
        v.db.abandon_pack(store, name)
        raise
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    v.db.store_ok(store)
    event(logging.INFO, "pack written under the new key", store=store, kind=kind,
          members=len(placed))
    return built.row


def _unfinished(store: str, exc: Exception) -> DispersiondError:
    return DispersiondError(f"store {store!r} did not answer while its packs were written "
                            f"under the new key ({exc}); the rotation is not finished: run "
                            "rotate-key again when the store answers")
