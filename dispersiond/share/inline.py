"""Inline share bundles (payload version 3, docs/FORMAT.md section 6.9): records carried
inside the bundle, each se2-encoded afresh under its own random key.

A de-identified derivative cannot use the stored public fragment (that is the
identified record), and a study export of thousands of small records should not need
thousands of cloud links; so the bundle's body holds, per record, its private then its
public fragment. The sealed, signed payload lists every record with its key and the
digests of both fragments and of the record itself, so nothing in the body is trusted
before it is checked. Bounded: MAX_RECORD per record, MAX_BODY and MAX_FILES per bundle.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..codec import se2
from .errors import BundleFormatError

INLINE_VERSION = 3
MAX_FILES = 5000  # keeps the sealed payload under bundle.MAX_SEALED
MAX_RECORD = 64 << 20
MAX_BODY = 1 << 31
MAX_WARNINGS, MAX_TEXT = 50, 500
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[A-Z2-7]{16}|[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
KINDS = ("dicom", "fhir", "hl7v2", "csv")
SUFFIXES = {"dicom": ".dcm", "fhir": ".json", "hl7v2": ".hl7", "csv": ".csv", None: ".bin"}
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Record:
    """One record ready to carry: its manifest entry and its two fragments."""

    entry: dict
    prf: bytes
    puf: bytes


def _bad(what: str) -> BundleFormatError:
    return BundleFormatError(f"the bundle's contents are malformed ({what})")


def _int(x, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= hi


def _text(x, limit: int = MAX_TEXT) -> bool:
    return isinstance(x, str) and len(x) <= limit and not any(ord(c) < 32 for c in x)


def pack(record_id: str, kind: str | None, data: bytes, key: bytes, *,
         warnings: tuple[str, ...] = (), report: dict[str, int] | None = None,
         deidentified: bool) -> Record:
    """se2-encode one record under `key` and describe it for the manifest."""
    from .. import codec

    puf, prf = codec.encode("se2", key, data)
    entry = {"id": record_id, "name": record_id + SUFFIXES.get(kind, ".bin"), "kind": kind,
             "size": len(data), "digest": hashlib.sha256(data).hexdigest(), "key": key.hex(),
             "puf_len": len(puf), "prf_len": len(prf),
             "puf_digest": hashlib.sha256(puf).hexdigest(),
             "prf_digest": hashlib.sha256(prf).hexdigest(),
             "warnings": [w[:MAX_TEXT] for w in warnings[:MAX_WARNINGS]],
             "report": dict(report or {}), "deidentified": deidentified}
    return Record(entry, prf, puf)


def check_inline(p: dict) -> dict:
    """Strict shape check of a version 3 payload (after its signature verified)."""
    if p.get("type") != "inline" or not isinstance(p.get("export"), bool):
        raise _bad("inline type")
    if not _int(p.get("created"), 1 << 40):
        raise _bad("created")
    if not isinstance(p.get("role"), str) or p["role"] not in ("doctor", "institute",
                                                               "authority", "other"):
        raise _bad("role")
    for k in ("request", "purpose", "override_reason"):
        if p.get(k) is not None and not _text(p[k], 1000):
            raise _bad(k)
    if p.get("use_until") is not None and not (isinstance(p["use_until"], str)
                                               and _DATE.fullmatch(p["use_until"])):
        raise _bad("use_until")
    files = p.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise _bad("files")
    names, total = set(), 0
    for f in files:
        if not isinstance(f, dict):
            raise _bad("file entry")
        if not (isinstance(f.get("id"), str) and _ID.fullmatch(f["id"])):
            raise _bad("record id")
        if not (isinstance(f.get("name"), str) and _NAME.fullmatch(f["name"])) \
                or f["name"] in names or f["name"] == MANIFEST_NAME:
            raise _bad("record name")
        names.add(f["name"])
        if f.get("kind") is not None and f["kind"] not in KINDS:
            raise _bad("record kind")
        if not _int(f.get("size"), MAX_RECORD):
            raise _bad("record size")
        if not (_int(f.get("puf_len"), 2 * MAX_RECORD) and f["puf_len"] >= se2.PUF_HEADER_LEN
                and _int(f.get("prf_len"), 2 * MAX_RECORD)
                and f["prf_len"] >= se2.PRF_HEADER_LEN):
            raise _bad("fragment lengths")
        total += f["puf_len"] + f["prf_len"]
        for k in ("digest", "key", "puf_digest", "prf_digest"):
            if not (isinstance(f.get(k), str) and _HEX64.fullmatch(f[k])):
                raise _bad(k)
        warns = f.get("warnings")
        if not (isinstance(warns, list) and len(warns) <= MAX_WARNINGS
                and all(_text(w) for w in warns)):
            raise _bad("warnings")
        rep = f.get("report")
        if not (isinstance(rep, dict) and len(rep) <= 50
                and all(_text(k, 64) and _int(n, 1 << 40) for k, n in rep.items())):
            raise _bad("report")
        if not isinstance(f.get("deidentified"), bool):
            raise _bad("deidentified")
    if total > MAX_BODY:
        raise _bad("body too large")
    return p


def manifest(p: dict, sender: dict | None) -> dict:
    """The manifest a recipient keeps next to the records: what is inside, who sent it,
    and what de-identification did (keys and fragment details left out)."""
    keep = ("id", "name", "kind", "size", "digest", "warnings", "report", "deidentified")
    return {"sender": sender, "created": p["created"], "role": p["role"],
            "request": p.get("request"), "purpose": p.get("purpose"),
            "use_until": p.get("use_until"), "override_reason": p.get("override_reason"),
            "digest_alg": "sha256",
            "records": [{k: f[k] for k in keep} for f in p["files"]]}
