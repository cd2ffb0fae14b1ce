"""Inline bundles from the device: one de-identified record (`share` to an institute or
the authority), a study export (`export`) or an approved request's records.

Each record is restored and verified against its recorded digest, de-identified under
the recipient's policy and pseudonym secret unless the role (or an audited override)
says otherwise, se2-encoded afresh and carried in the bundle (inline.py). A record that
cannot be de-identified is left out and reported to the device owner, never sent as is.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import io
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import scratch
from ..config import Recipient
from ..deid import DeidRefused, deidentify, detect_kind
from ..deid.pseudonym import pseudonym
from ..errors import DispersiondError
from ..fsutil import atomic_output
from ..logs import event
from ..state import FileRow, dumps
from . import device
from .bundle import SUFFIX, seal_signed
from .errors import ShareError, ShareRefused
from .inline import INLINE_VERSION, MAX_BODY, MAX_FILES, MAX_RECORD, Record, pack
from .roles import pseudonym_secret, recipient_key

_BY_SUFFIX = {".dcm": "dicom", ".dicom": "dicom", ".json": "fhir", ".hl7": "hl7v2",
              ".hl7v2": "hl7v2", ".csv": "csv", ".tsv": "csv"}


@dataclass
class ExportResult:
    path: Path
    recipient: str
    records: int
    deidentified: bool
    bundle_sha256: str
    sender_fingerprint: str
    skipped: list[dict] = field(default_factory=list)
    warnings: int = 0

    def as_dict(self) -> dict:
        return {"path": str(self.path), "recipient": self.recipient, "records": self.records,
                "deidentified": self.deidentified, "bundle_sha256": self.bundle_sha256,
                "sender_fingerprint": self.sender_fingerprint, "skipped": self.skipped,
                "warnings": self.warnings}


def kind_by_name(name: str) -> str | None:
    return _BY_SUFFIX.get(os.path.splitext(name)[1].lower())


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).date().isoformat()


def select(v, *, ids: list[str] | None = None, kind: str | None = None,
           since: str | None = None, until: str | None = None,
           name_glob: str | None = None) -> list[FileRow]:
    """Protected records matching ids, or a kind (by name; content decides for names
    without a known suffix), a date range (the record's mtime, else when it was
    protected; inclusive, UTC) and a name pattern."""
    rows = [f for f in v.db.protected_files() if f.scheme == "se2"]
    if ids is not None:
        want = set(ids)
        return [f for f in rows if f.file_id in want]
    out = []
    for f in rows:
        day = _day(f.mtime or f.created)
        if since and day < since or until and day > until:
            continue
        if name_glob and not fnmatch.fnmatchcase(os.path.basename(f.name), name_glob):
            continue
        named = kind_by_name(f.name)
        if kind and named is not None and named != kind:
            continue
        out.append(f)
    return sorted(out, key=lambda f: (f.mtime or f.created, f.file_id))


def record_bytes(v, f: FileRow, tmp: Path) -> bytes:
    """The record's original bytes, rebuilt and checked against its recorded digest.
    `tmp` is emptied afterwards: one folder serves a whole export (making and removing a
    folder per record was a third of an export's time)."""
    from ..ops.restore import decode_to, private_container, public_fragment

    if f.size > MAX_RECORD:
        raise DispersiondError(f"file {f.file_id} is {f.size} bytes, more than the "
                               f"{MAX_RECORD >> 20} MiB an inline bundle carries per record")
    buf = io.BytesIO()
    try:
        decode_to(v, f, public_fragment(v, f, tmp), private_container(v, f, tmp), buf)
    finally:
        for p in tmp.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return buf.getvalue()


def derive(v, f: FileRow, rcpt: Recipient, secret: bytes, identified: bool,
           kind: str | None, tmp: Path) -> Record | None:
    """One record ready to carry, or None when it is not of `kind`. DeidRefused when it
    cannot be de-identified (the caller leaves it out)."""
    data = record_bytes(v, f, tmp)
    try:
        found = detect_kind(data, f.name)
    except DeidRefused:
        if not identified:
            raise
        found = None
    if kind and found != kind:
        return None
    key = os.urandom(32)
    if identified:
        return pack(f.file_id, found, data, key, deidentified=False)
    res = deidentify(data, found, rcpt.policy(), secret, name_hint=f.name)
    return pack(pseudonym(secret, f.file_id, 16, "record"), res.kind, res.data, key,
                warnings=res.warnings, report=res.report, deidentified=True)


def _derived(v, files: list[FileRow], rcpt: Recipient, secret: bytes, identified: bool,
             kind: str | None, tmp: Path):
    """(record or None, file, reason it was left out or None) for each file."""
    for f in files:
        try:
            yield derive(v, f, rcpt, secret, identified, kind, tmp), f, None
        except DeidRefused as exc:
            yield None, f, str(exc)
        except DispersiondError as exc:
            yield None, f, str(exc).splitlines()[0]


def export_name(recipient: str) -> str:
    return f"export-{recipient}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}{SUFFIX}"


def write_inline(v, rcpt: Recipient, files: list[FileRow], out: Path, *,
                 identified: bool = False, reason: str | None = None, kind: str | None = None,
                 export: bool = True, request: str | None = None, purpose: str | None = None,
                 use_until: str | None = None, overwrite: bool = False,
                 via: str = "export") -> ExportResult:
    """Write one inline bundle of `files` for `rcpt`; audited as "export" (or "share")."""
    rpk = recipient_key(rcpt)
    ident = identified or rcpt.identified
    if len(files) > MAX_FILES:
        raise ShareRefused(f"share refused: {len(files)} records is more than the {MAX_FILES} "
                           "one bundle carries: narrow it with --since, --kind or --name")
    if out.is_dir():
        out = out / export_name(rcpt.name)
    if out.exists() and not overwrite:
        raise ShareError(f"{out} exists; choose another --out or pass --force")
    signer = device.load_or_create(v.root, v.key)
    secret = pseudonym_secret(signer, rcpt)
    records: list[Record] = []
    included: list[str] = []
    skipped: list[dict] = []
    body = 0
    with scratch.folder(v.root / "work", "export") as tmpd:
        for rec, f, err in _derived(v, files, rcpt, secret, ident, kind, Path(tmpd)):
            if err is not None:
                skipped.append({"file_id": f.file_id, "reason": err})
                continue
            if rec is None:
                continue
            body += len(rec.prf) + len(rec.puf)
            if body > MAX_BODY:
                raise ShareRefused(f"share refused: the records come to more than "
                                   f"{MAX_BODY >> 30} GiB, more than one bundle carries: "
                                   "narrow the export")
            records.append(rec)
            included.append(f.file_id)
    if not records:
        _audit(v, "share-refused", files[0].file_id if len(files) == 1 else None,
               recipient=rcpt.name, via=via, request=request,
               reason="no record could be shared", skipped=len(skipped))
        raise ShareRefused("share refused: no record " + (
            "matched" if not skipped else f"could be shared ({skipped[0]['file_id']}: "
                                          f"{skipped[0]['reason']})"))
    payload = {"v": INLINE_VERSION, "type": "inline", "export": export,
               "created": int(time.time()), "role": rcpt.role, "request": request,
               "purpose": purpose, "use_until": use_until, "override_reason": reason,
               "files": [r.entry for r in records]}
    sealed = seal_signed(dumps(payload).encode(), rpk, signer)
    out.parent.mkdir(parents=True, exist_ok=True)
    bh = hashlib.sha256()
    with atomic_output(out, overwrite=overwrite, mode=0o600) as w:
        for part in [sealed] + [p for r in records for p in (r.prf, r.puf)]:
            w.write(part)
            bh.update(part)
    res = ExportResult(out, rcpt.name, len(records), not ident, bh.hexdigest(),
                       signer.fingerprint, skipped,
                       sum(len(r.entry["warnings"]) for r in records))
    _audit(v, "share" if not export else "export", included[0] if not export else None,
           recipient=rcpt.name, role=rcpt.role, via=via, deidentified=not ident,
           override_reason=reason, request=request, records=len(records),
           file_ids=included if export else None, skipped=len(skipped),
           bundle_sha256=res.bundle_sha256, sender=signer.fingerprint)
    event(logging.INFO, "inline share bundle written", recipient=rcpt.name,
          records=len(records), deidentified=not ident)
    return res


def _audit(v, name: str, file_id: str | None, **detail) -> None:
    v.audit(name, file_id, **{k: x for k, x in detail.items() if x is not None})
    v.db.mark_manifest_dirty()

