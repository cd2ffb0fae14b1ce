"""The `verify` operation: are every file's objects there and intact?

Shallow: stat every object (size, the store's own checksum where it keeps one of the
same kind). Deep: download every object and check its digest. Objects found bad are
marked so that `repair` (ops/repair.py) knows what to rebuild.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from backends import NotFound, StoreError, Unavailable

from ..errors import IntegrityError
from ..fsutil import Discard
from ..layout import Layout
from ..state import ObjectRow
from ..archive import Progress, Archive
from .restore import fetch_object


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


def verify(v: Archive, deep: bool = False, progress: Progress | None = None,
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
        need = Layout.of_row(f).need
        local = v.container_path(f.file_id).exists()
        if good_pub < need or not (good_prv or local):
            rep.unrestorable.append(f.file_id)
    return rep


def _check(v: Archive, obj: ObjectRow, deep: bool, progress: Progress | None) -> str | None:
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


