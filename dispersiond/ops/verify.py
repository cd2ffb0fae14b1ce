"""The `verify` operation: are every file's objects there and intact?

Shallow: stat every object (size, the store's own checksum where it keeps one of the
same kind). Deep: download every object and check its digest. A packed member is checked
with its pack, once per pack (ops/pack_checks.py, docs/FORMAT.md §8.5). Objects found
bad are marked so that `repair` (ops/repair.py) knows what to rebuild.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from backends import NotFound, StoreError, Unavailable

from ..errors import IntegrityError, WrongKey
from ..fsutil import Discard
from ..keys import key_id
from ..layout import Layout
from ..state import FileRow, ObjectRow
from ..archive import Progress, Archive
from .pack_checks import PackVerdicts, Verdict, member_verdict
from .restore import fetch_object


@dataclass
class Finding:
    file_id: str
    store: str
    object: str
    role: str
    shard: int | None
    problem: str  # missing | corrupt | wrong-size | checksum-mismatch | pack-damaged | unreachable
    detail: str | None = None  # for a packed member: what its pack's check found

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


def verify(v: Archive, deep: bool = False, progress: Progress | None = None,
           files: list[str] | None = None, packs: PackVerdicts | None = None) -> VerifyReport:
    """Shallow: stat every object, and every pack once (size, the store's own hash where
    it has one of the same kind). Deep: download every object and pack and check its
    digests. `packs`: verdicts shared by several calls of one run (each pack checked once)."""
    rep = VerifyReport()
    rows = v.db.protected_files()
    if files is not None:
        rows = [f for f in rows if f.file_id in files]
    same_key(v, rows)
    seen: PackVerdicts = {} if packs is None else packs
    for f in rows:
        rep.files += 1
        good_pub = good_prv = 0
        for obj in v.db.objects(f.file_id, not_state="pending"):
            rep.objects += 1
            if obj.packed:  # its pack's check recorded the state already
                verdict = member_verdict(v, obj, deep, progress, seen)
            else:
                verdict = _check(v, obj, deep, progress)
                if verdict is None and obj.state != "uploaded":
                    v.db.set_object_state(obj.id, "uploaded")
                elif verdict is not None and verdict.state and verdict.state != obj.state:
                    v.db.set_object_state(obj.id, verdict.state)
            if verdict is None or verdict.usable:
                good_pub += obj.role == "public"
                good_prv += obj.role == "private"
            if verdict is None:
                rep.ok += 1
                continue
            rep.findings.append(Finding(f.file_id, obj.store, obj.name, obj.role, obj.shard,
                                        verdict.problem, verdict.detail))
        need = Layout.of_row(f).need
        local = v.has_container(f.file_id)
        if good_pub < need or not (good_prv or local):
            rep.unrestorable.append(f.file_id)
    return rep


def same_key(v: Archive, rows: list[FileRow]) -> None:
    """Refuse to judge files protected under another master key: every pack and member
    would fail its checks, and repair would rewrite good copies under the wrong key."""
    mine = key_id(v.key)
    other = [f for f in rows if f.key_id and f.key_id != mine]
    if other:
        raise WrongKey(f"{len(other)} file(s), the first {other[0].file_id}, were protected "
                       f"with a different master key (key id {other[0].key_id}, yours {mine}): "
                       "nothing was checked or changed; use the key they were made with (or "
                       "finish an interrupted 'dispersiond rotate-key')")


def _check(v: Archive, obj: ObjectRow, deep: bool, progress: Progress | None) -> Verdict | None:
    if obj.store in v.down:  # answered Unavailable earlier in this run: do not wait again
        return Verdict("unreachable")
    try:
        if deep:
            fetch_object(v, obj, Discard(), progress)
            return None
        info = v.store(obj.store).stat(obj.name)
    except NotFound:
        return Verdict("missing")
    except IntegrityError:
        return Verdict("corrupt")
    except StoreError as exc:
        v.db.store_error(obj.store, str(exc))
        if isinstance(exc, Unavailable):
            v.down.add(obj.store)
        return Verdict("unreachable")
    v.db.store_ok(obj.store)
    if info.size != obj.object_size:
        return Verdict("wrong-size")
    theirs = info.checksums.get(obj.digest_alg or "")
    if theirs and theirs != obj.digest:
        return Verdict("checksum-mismatch")
    if obj.state == "corrupt" and not theirs:  # a stat cannot clear a failed digest check
        return Verdict("corrupt", "found damaged by an earlier digest check")
    return None
