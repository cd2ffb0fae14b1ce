"""The manifest: per file, where every object lives and the digests to check it by.

It lives in the state database; an encrypted copy (format in docs/FORMAT.md §5)
goes to every private store so that a blank device with only the config and the
key can rebuild its state (`dispersiond recover`).
"""
from __future__ import annotations

import json
import os
import time
import zlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import digests
from .codec import se2
from .display import as_text, b64, from_b64
from .errors import IntegrityError, WrongKey
from .keys import subkey
from .layout import Layout
from .state import PROTECTED, FileRow, StateDB, dumps

MAGIC = b"DSPM"
VERSION = 1  # of the sealed envelope
FORMAT = 4  # of the JSON inside: 2 named every digest's algorithm; 3 adds sender_key;
#            4 adds name_b64 (a name that is not valid UTF-8)
PREFIX = "manifest/"
KEEP_BACKUPS = 3

FILE_FIELDS = ("file_id", "name", "size", "digest", "digest_alg", "mtime", "scheme", "head_len",
               "chunk_log2", "puf_len", "prf_len", "prf_digest", "key_id", "public_mode", "k",
               "n", "block", "created")
OBJECT_FIELDS = ("role", "shard", "store", "name", "offset", "length", "object_size", "digest")
#: Document key -> state database field, where they differ (the document keeps its keys;
#: the layout's are mapped in layout.py).
ROW_FIELD = {"prf_len": "container_len", "prf_digest": "container_digest"}


def entry(db: StateDB, f: FileRow) -> dict:
    """One file's manifest entry (what restore needs, nothing more)."""
    e = {"file_id": f.file_id, "name": as_text(f.name), "mtime": f.mtime, "created": f.created,
         **Layout.of_row(f).entry_fields()}
    if (raw := b64(f.name)) is not None:
        e["name_b64"] = raw  # the exact bytes; `name` then holds them escaped
    e["objects"] = [{k: getattr(o, k) for k in OBJECT_FIELDS} for o in db.objects(f.file_id)]
    return e


def snapshot(db: StateDB, seq: int, sender_seed: bytes | None = None) -> dict:
    """The backup document; `sender_seed` is the device's signing key (share/device.py),
    so that a recovered device signs its shares as before."""
    files = db.files_in(*PROTECTED)
    audit = [dict(r) for r in db.audit_rows()]
    doc = {"format": FORMAT, "seq": seq, "created": time.time(),
           "audit_head": db.audit_head(), "audit": audit,
           "files": [entry(db, f) for f in files]}
    if sender_seed is not None:
        doc["sender_key"] = sender_seed.hex()
    return doc


def seal(master_key: bytes, doc: dict) -> bytes:
    header = MAGIC + bytes([VERSION]) + se2.key_id(master_key)
    nonce = os.urandom(12)
    body = zlib.compress(dumps(doc).encode(), 6)
    return header + nonce + AESGCM(subkey(master_key, "manifest")).encrypt(nonce, body, header)


def open_sealed(master_key: bytes, blob: bytes) -> dict:
    if blob[:4] != MAGIC or len(blob) < 13 + 12 + 16:
        raise IntegrityError("not a dispersiond manifest backup")
    if blob[4] != VERSION:
        raise IntegrityError(f"manifest backup version {blob[4]} is not supported")
    header = blob[:13]
    if header[5:13] != se2.key_id(master_key):
        raise WrongKey(f"manifest backup was sealed with key {header[5:13].hex()}, not yours "
                       f"({se2.key_id(master_key).hex()})")
    try:
        body = AESGCM(subkey(master_key, "manifest")).decrypt(blob[13:25], blob[25:], header)
    except InvalidTag:
        raise IntegrityError("manifest backup failed authentication (altered)") from None
    return json.loads(zlib.decompress(body))


def _upgrade(doc: dict) -> dict:
    """An older document in today's shape: format 1's digests were all SHA-256, named
    sha256; formats 1 and 2 carry no sender_key (the device makes a new one); formats
    1 to 3 carry no name_b64 (their names are all valid UTF-8)."""
    fmt = doc.get("format")
    if fmt == FORMAT:
        return doc
    if fmt in (2, 3):
        return dict(doc, format=FORMAT)
    if fmt != 1:
        raise IntegrityError(f"manifest format {fmt!r} is not read by this build; upgrade "
                             "dispersiond")
    def renamed(d: dict, **new_from_old: str) -> dict:
        kept = {k: v for k, v in d.items() if k not in new_from_old.values()}
        return {**kept, **{new: d[old] for new, old in new_from_old.items()}}

    files = [dict(renamed(e, digest="sha256", prf_digest="prf_sha256"),
                  digest_alg=digests.LEGACY,
                  objects=[renamed(o, digest="sha256") for o in e["objects"]])
             for e in doc["files"]]
    return dict(doc, format=FORMAT, files=files)


def _row_fields(e: dict) -> dict:
    """An entry's file columns: its identity, and its layout converted in layout.py."""
    return {"file_id": e["file_id"], "name": e["name"], "mtime": e["mtime"],
            "created": e["created"], **Layout.of_entry(e).row_fields()}


def load_into(db: StateDB, doc: dict) -> int:
    """Rebuild file, object and audit rows from a backup; returns the number of files."""
    doc = _upgrade(doc)
    db.load_backup([({**_row_fields(e), "name": from_b64(e["name"], e.get("name_b64"))},
                     [{k: o[k] for k in OBJECT_FIELDS} for o in e["objects"]])
                    for e in doc["files"]],
                   doc.get("audit", []), doc.get("audit_head"), doc["seq"])
    return len(doc["files"])
