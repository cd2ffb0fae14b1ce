"""Verifying pack objects (docs/FORMAT.md §8.5): a pack is checked once for all its members.

Shallow: one stat per pack (its size, and the store's own hash of the whole pack where it
keeps one of the pack's kind). Deep: one download of the whole pack, hashed against its
digest; its sealed index opened; every member checked against its digest in the index and
in the state. What is found is recorded for the pack and every member in one transaction,
and returned per member so that verify names each damaged one.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

from backends import NotFound, StoreError, Unavailable

from .. import scratch
from .. import digests
from ..errors import FormatError, IntegrityError
from ..pack import PackIndex, extract, open_index
from ..pack.source import RangeReader
from ..state import ObjectRow
from ..archive import Progress, Archive


@dataclass(frozen=True)
class Verdict:
    """What is wrong with one object or member (verify's problem words)."""

    problem: str  # missing | corrupt | wrong-size | checksum-mismatch | pack-damaged | unreachable
    detail: str | None = None

    @property
    def usable(self) -> bool:
        """The member's own bytes are intact (its pack must still be rewritten)."""
        return self.problem == "pack-damaged"

    @property
    def state(self) -> str | None:
        """The object state it records (None: nothing learnt about the object)."""
        return {"missing": "missing", "unreachable": None}.get(self.problem, "corrupt")


#: (store, pack name) -> object id -> verdict (None: intact), for one verify run.
PackVerdicts = dict[tuple[str, str], dict[int, "Verdict | None"]]


def member_verdict(v: Archive, obj: ObjectRow, deep: bool, progress: Progress | None,
                   seen: PackVerdicts) -> Verdict | None:
    """The verdict on one packed member, checking its pack on first sight only."""
    key = (obj.store, obj.name)
    if key not in seen or obj.id not in seen[key]:  # not yet, or the pack changed since
        seen[key] = check_pack(v, obj.store, obj.name, deep, progress)
    return seen[key].get(obj.id, Verdict("missing", f"not a member of pack {obj.name} any "
                                                    "more: run verify again"))


def check_pack(v: Archive, store: str, name: str, deep: bool,
               progress: Progress | None = None) -> dict[int, Verdict | None]:
    """Check one pack for all its members; records the pack's and the members' states."""
    members = v.db.pack_members(store, name)
    if not members:
        return {}
    if store in v.down:  # answered Unavailable earlier in this run: do not wait again
        return _all(members, Verdict("unreachable"))
    try:
        if deep:
            return _deep(v, store, name, members, progress)
        return _shallow(v, store, name, members)
    except NotFound:
        v.db.set_pack_state(store, name, "missing")
        return _all(members, Verdict("missing", f"pack {name} is gone, every member with it"))
    except StoreError as exc:
        v.db.store_error(store, str(exc))
        if isinstance(exc, Unavailable):
            v.down.add(store)
        return _all(members, Verdict("unreachable"))


def _all(members: list[ObjectRow], verdict: Verdict) -> dict[int, Verdict | None]:
    return {m.id: verdict for m in members}


def _shallow(v: Archive, store: str, name: str,
             members: list[ObjectRow]) -> dict[int, Verdict | None]:
    head = members[0]
    info = v.store(store).stat(name)
    v.db.store_ok(store)
    if info.size != head.object_size:
        out = _all(members, Verdict("wrong-size", f"pack {name} holds {info.size} bytes, "
                                                  f"{head.object_size} were stored"))
    else:
        theirs = info.checksums.get(head.digest_alg or "")
        if theirs and theirs != head.pack_digest:
            out = _all(members, Verdict("checksum-mismatch", f"the store's hash of pack {name} "
                                        "is not the one recorded"))
        else:
            # The store's own hash of the whole pack proves every member; a stat alone
            # cannot clear what an earlier digest check found.
            earlier = Verdict("corrupt", "found damaged by an earlier digest check")
            out = {m.id: earlier if m.state == "corrupt" and not theirs else None
                   for m in members}
    _record(v, store, name, out)
    return out


def _deep(v: Archive, store: str, name: str, members: list[ObjectRow],
          progress: Progress | None) -> dict[int, Verdict | None]:
    head = members[0]
    alg = head.digest_alg or ""
    with downloaded(v, store, name, alg, progress) as (read, size, digest):
        if size != head.object_size:
            out = _all(members, Verdict("wrong-size", f"pack {name} holds {size} bytes, "
                                                      f"{head.object_size} were stored"))
            _record(v, store, name, out)
            return out
        index, index_error = None, ""
        try:
            index = open_index(v.key, name, read, size)
        except (IntegrityError, FormatError) as exc:
            index_error = str(exc)
        bad = {m.id for m in members if not _intact(v, read, m)}
    out = judge(members, index, index_error, bad, digest == head.pack_digest)
    _record(v, store, name, out)
    pack = v.db.pack(store, name)
    if index is not None and pack is not None and pack.body_len is None:
        v.db.set_pack_body(store, name, index.body_len, len(index.members))  # a recovered row
    return out


def _intact(v: Archive, read: RangeReader, m: ObjectRow) -> bool:
    try:
        extract(read, m.offset, m.length, master_key=v.key, name=m.name, digest=m.digest,
                digest_alg=m.digest_alg or "")
        return True
    except (IntegrityError, FormatError):
        return False


def judge(members: list[ObjectRow], index: PackIndex | None, index_error: str,
          bad: set[int], whole_ok: bool) -> dict[int, Verdict | None]:
    """Each member's verdict from a deep check of its pack. Pure.

    A member whose bytes fail its digest is corrupt, and only it: the others are intact.
    With every member intact, a pack whose index does not open, does not list a member
    where the state says, or whose bytes outside the members changed is damaged as a
    whole (`pack-damaged`: the members are usable, the pack is rewritten by repair)."""
    refs = index.by_ref() if index is not None else {}
    out: dict[int, Verdict | None] = {}
    for m in members:
        if m.id in bad:
            out[m.id] = Verdict("corrupt", f"member at {m.offset}+{m.length} of pack {m.name} "
                                "does not match its digest")
            continue
        entry = refs.get(bytes.fromhex(m.file_id))
        if index is None:
            out[m.id] = Verdict("pack-damaged", index_error)
        elif entry is None or (entry.offset, entry.length, entry.digest) != \
                (m.offset, m.length, m.digest):
            out[m.id] = Verdict("pack-damaged", f"the index of pack {m.name} does not list "
                                "this member where the state does")
        elif not whole_ok and not bad:
            out[m.id] = Verdict("pack-damaged", f"pack {m.name} does not match its digest "
                                "outside its members")
        else:
            out[m.id] = None
    return out


def _record(v: Archive, store: str, name: str, out: dict[int, Verdict | None]) -> None:
    states = {i: ("uploaded" if vd is None else vd.state) for i, vd in out.items()}
    known = {i: s for i, s in states.items() if s is not None}
    v.db.record_pack_check(store, name, "uploaded" if all(vd is None for vd in out.values())
                           else "corrupt", known)


@contextlib.contextmanager
def downloaded(v: Archive, store: str, name: str, alg: str,
               progress: Progress | None = None) -> Iterator[tuple[RangeReader, int, str]]:
    """The whole pack fetched once into the work area: (ranged reader, size, digest).
    Raises NotFound or StoreError; the file is removed on leaving."""
    fd, path = scratch.file(v.root / "work", "pack")
    try:
        h, n = digests.new(alg), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in v.store(store).get(name):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
                if progress:
                    progress(len(chunk))
        v.db.store_ok(store)
        with open(path, "rb") as f:
            def read(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            yield read, n, h.hexdigest()
    finally:
        path.unlink(missing_ok=True)
