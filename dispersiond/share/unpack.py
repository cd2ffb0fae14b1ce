"""Opening an inline bundle (payload version 3) on the recipient's side.

Every record's fragments are read from the body and checked against the digests in the
signed payload, decoded with its key and checked against the record's digest, all in a
temporary folder; only when every record passed are they renamed into place, with the
manifest next to them. A single de-identified record opens to a file path too.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import codec
from ..errors import CodecError
from ..fsutil import atomic_output
from .errors import BundleTampered, ObjectTampered, ShareError
from .inline import MANIFEST_NAME, manifest
from .senders import Sender


@dataclass
class OpenedInline:
    path: Path
    records: list[dict]
    manifest: Path | None
    sender: Sender | None = None
    deidentified: bool = True
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "records": self.records,
                "manifest": str(self.manifest) if self.manifest else None,
                "deidentified": self.deidentified, "warnings": self.warnings,
                "sender": self.sender.as_dict() if self.sender else None}


def _read_exact(fb: BinaryIO, n: int, what: str) -> bytes:
    data = fb.read(n)
    if len(data) != n:
        raise BundleTampered(f"the bundle is truncated ({what})")
    return data


def decode_records(fb: BinaryIO, p: dict) -> list[bytes]:
    """Every record's bytes, each checked; BundleTampered / ObjectTampered otherwise."""
    out = []
    for f in p["files"]:
        prf = _read_exact(fb, f["prf_len"], f"record {f['name']}")
        puf = _read_exact(fb, f["puf_len"], f"record {f['name']}")
        if (hashlib.sha256(prf).hexdigest() != f["prf_digest"]
                or hashlib.sha256(puf).hexdigest() != f["puf_digest"]):
            raise BundleTampered(f"record {f['name']} in the bundle does not match its digest "
                                 "(altered after it was made); do not use the bundle")
        buf = io.BytesIO()
        try:
            codec.decode_stream("se2", bytes.fromhex(f["key"]), io.BytesIO(puf), len(puf),
                                io.BytesIO(prf), len(prf), buf)
        except (CodecError, ValueError) as exc:
            raise ObjectTampered(f"record {f['name']} failed authentication while decoding "
                                 f"({str(exc).splitlines()[0]})") from None
        data = buf.getvalue()
        if len(data) != f["size"] or hashlib.sha256(data).hexdigest() != f["digest"]:
            raise ObjectTampered(f"record {f['name']} does not match its recorded digest")
        out.append(data)
    if fb.read(1):
        raise BundleTampered("the bundle has unexpected bytes at its end (altered)")
    return out


def open_inline(fb: BinaryIO, p: dict, out: Path, sender: Sender | None, *,
                force: bool = False) -> OpenedInline:
    """Write the records of an inline bundle: into the folder `out` (made if missing,
    with manifest.json), or, for one record and a path that is not a folder, to `out`."""
    datas = decode_records(fb, p)
    files = p["files"]
    warnings = [f"{f['name']}: {w}" for f in files for w in f["warnings"]]
    deid = all(f["deidentified"] for f in files)
    doc = manifest(p, sender.as_dict() if sender else None)
    if not p["export"] and len(files) == 1 and not out.is_dir():
        if out.exists() and not force:
            raise ShareError(f"{out} exists; choose another --out or pass --force")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out, overwrite=force, mode=0o600) as w:
            w.write(datas[0])
        return OpenedInline(out, doc["records"], None, sender, deid, warnings)
    if out.exists() and not out.is_dir():
        raise ShareError(f"{out} is a file; this bundle holds {len(files)} record(s) and the "
                         "manifest: give a folder with --out")
    names = [f["name"] for f in files] + [MANIFEST_NAME]
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise ShareError(f"{out / clash[0]} exists; choose another --out folder or pass --force")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=".open-share-", dir=out) as tmpd:
        tmp = Path(tmpd)
        for f, data in zip(files, datas):
            (tmp / f["name"]).write_bytes(data)
        (tmp / MANIFEST_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        for n in names:
            os.chmod(tmp / n, 0o600)
            os.replace(tmp / n, out / n)
    return OpenedInline(out, doc["records"], out / MANIFEST_NAME, sender, deid, warnings)
