"""The manifest: per file, where every object lives and the digests to check it by.

It lives in the state database; encrypted backups (format in docs/FORMAT.md §4) go to
every private store so that a blank device with only the config and the key can rebuild
its state (`dispersiond recover`). A backup is a checkpoint (every entry) or a delta
(what changed since the backup before it, which it names by seq and digest), so what a
backup uploads grows with the batch, not with the archive.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import digests, manifest_doc
from .codec import se2
from .display import as_text, b64, from_b64
from .errors import IntegrityError, WrongKey
from .keys import subkey
from .layout import Layout
from .state import PROTECTED, FileRow, StateDB, dumps

MAGIC = b"DSPM"
VERSION = 1  # of the sealed envelope
FORMAT = 6  # of the JSON inside: 2 named every digest's algorithm; 3 adds sender_key;
#            4: checkpoints and deltas, chained; name_b64 (a name that is not valid UTF-8);
#            5: pack_digest on an object entry of a packed member (docs/FORMAT.md §8.4);
#            6: segmented checkpoints (a root listing sealed segments, §4.1)
PREFIX = "manifest/"
KEEP_BACKUPS = 3  # generations (a checkpoint and the deltas on it) kept on each store
#: A new checkpoint once the deltas since the last one would exceed this share of its
#: size (so a record's amortised cost stays a constant multiple of its entry) ...
CHECKPOINT_FRACTION = 0.5
#: ... or once this many deltas build on it (bounds what recover fetches).
CHECKPOINT_EVERY = 1000
#: Files per checkpoint segment: new files fill the last one, so a checkpoint re-seals
#: the few segments that changed, and its root lists N / SEGMENT_FILES of them.
SEGMENT_FILES = 1000

FILE_FIELDS = ("file_id", "name", "size", "digest", "digest_alg", "mtime", "scheme", "head_len",
               "chunk_log2", "puf_len", "prf_len", "prf_digest", "key_id", "public_mode", "k",
               "n", "block", "created")
OBJECT_FIELDS = ("role", "shard", "store", "name", "offset", "length", "object_size", "digest")
#: Document key -> state database field, where they differ (the document keeps its keys;
#: the layout's are mapped in layout.py).
ROW_FIELD = {"prf_len": "container_len", "prf_digest": "container_digest"}


def entry(db: StateDB, f: FileRow) -> dict:
    """One file's manifest entry (what restore needs, nothing more)."""
    return _entry(f, db.objects(f.file_id))


def _entry(f: FileRow, objects: list) -> dict:
    e = {"file_id": f.file_id, "name": as_text(f.name), "mtime": f.mtime, "created": f.created,
         **Layout.of_row(f).entry_fields()}
    if (raw := b64(f.name)) is not None:
        e["name_b64"] = raw  # the exact bytes; `name` then holds them escaped
    e["objects"] = [_object(o) for o in objects]
    return e


def _object(o) -> dict:
    out = {k: getattr(o, k) for k in OBJECT_FIELDS}
    if o.pack_digest is not None:  # only on packed members: others read as before
        out["pack_digest"] = o.pack_digest
    return out


def entries(db: StateDB, file_ids: list[str]) -> list[dict]:
    """The entries of those of `file_ids` still protected, in that order (a few reads)."""
    rows = db.files_by_id(file_ids)
    objects: dict[str, list] = {}
    for o in db.objects_of([fid for fid, f in rows.items() if f.state in PROTECTED]):
        objects.setdefault(o.file_id, []).append(o)
    return [_entry(f, objects.get(fid, [])) for fid, f in rows.items() if f.state in PROTECTED]


def segment(seq: int, index: int, files: list[dict]) -> dict:
    """One segment of checkpoint `seq`: the entries of the files it holds."""
    return {"format": FORMAT, "kind": "segment", "seq": seq, "index": index, "files": files}


def root(db: StateDB, seq: int, refs: list[dict], sender_seed: bytes | None = None,
         prev: dict | None = None) -> dict:
    """A segmented checkpoint: every audit entry and the list of its segments
    ({index, name, digest, files} each), not the entries themselves."""
    doc = _doc("checkpoint", seq, seq, prev, db, [dict(r) for r in db.audit_rows()], [], [],
               sender_seed)
    doc["segments"] = refs
    return doc


def segment_name(blob: bytes) -> str:
    """Content-addressed (the same on every store): 32 hex digits of the sealed bytes'
    SHA-256, as opaque as a random name."""
    return PREFIX + blob_digest(blob)[:32]


def expand(doc: dict, segments: list[dict], where: str = "(backup)") -> dict:
    """A segmented checkpoint with its segments' entries in `files`, for replay: each
    segment must be the one listed (index and count; the digest matched already), no
    file twice."""
    files = list(doc["files"])
    for ref, seg in zip(doc["segments"], segments, strict=True):
        if seg["index"] != ref["index"] or len(seg["files"]) != ref["files"]:
            raise IntegrityError(f"manifest backup {where}: segment {ref['index']} is not the "
                                 "one its root lists (the backup is not used)")
        files += seg["files"]
    if len({e["file_id"] for e in files}) != len(files):
        raise IntegrityError(f"manifest backup {where}: a file is in two segments (the "
                             "backup is not used)")
    return {**doc, "files": files}


def snapshot(db: StateDB, seq: int, sender_seed: bytes | None = None,
             prev: dict | None = None) -> dict:
    """A checkpoint: every protected file and every audit entry. `sender_seed` is the
    device's signing key (share/device.py), so that a recovered device signs its shares
    as before; `prev` ({seq, digest}) names the backup before it."""
    objects = db.objects_by_file()
    files = [_entry(f, objects.get(f.file_id, [])) for f in db.files_in(*PROTECTED)]
    return _doc("checkpoint", seq, seq, prev, db, [dict(r) for r in db.audit_rows()], files,
                [], sender_seed)


def delta(db: StateDB, seq: int, base: int, prev: dict, changed: list[str], audit_after: int,
          sender_seed: bytes | None = None) -> dict:
    """What changed since backup `prev`: the entries of the `changed` files still
    protected, the ids of those that are not (forgotten), the audit entries after
    `audit_after`."""
    files, removed = [], []
    rows = db.files_by_id(changed)  # a few reads for the batch, not two a file
    objects: dict[str, list] = {}
    for o in db.objects_of([fid for fid, f in rows.items() if f.state in PROTECTED]):
        objects.setdefault(o.file_id, []).append(o)
    for fid in changed:
        f = rows.get(fid)
        if f is not None and f.state in PROTECTED:
            files.append(_entry(f, objects.get(fid, [])))
        else:
            removed.append(fid)
    return _doc("delta", seq, base, prev, db, db.audit_rows_after(audit_after), files, removed,
                sender_seed)


def _doc(kind: str, seq: int, base: int, prev: dict | None, db: StateDB, audit: list[dict],
         files: list[dict], removed: list[str], sender_seed: bytes | None) -> dict:
    doc = {"format": FORMAT, "kind": kind, "seq": seq, "base": base, "prev": prev,
           "created": time.time(), "audit_head": head_of(db.audit_head()), "audit": audit,
           "files": files, "removed": removed}
    if sender_seed is not None:
        doc["sender_key"] = sender_seed.hex()
    return doc


def head_of(recorded: str | None) -> str | None:
    """'seq:hash' of a recorded head (the state keeps a MAC after it)."""
    return None if not recorded else ":".join(recorded.split(":")[:2])


def blob_digest(blob: bytes) -> str:
    """What the next backup names its predecessor by."""
    return hashlib.sha256(blob).hexdigest()


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


def read(master_key: bytes, blob: bytes, where: str) -> dict:
    """Open, upgrade and check one backup (a checkpoint, delta or segment): a format-6 document, or a one-line
    IntegrityError/WrongKey naming `where`."""
    try:
        doc = open_sealed(master_key, blob)
    except (ValueError, zlib.error, UnicodeDecodeError, RecursionError):
        raise IntegrityError(f"manifest backup {where} is sealed with your key but its "
                             "content is not a manifest (not used)") from None
    except IntegrityError as exc:
        raise IntegrityError(f"manifest backup {where}: {exc}") from None
    return manifest_doc.check(upgrade(doc, where), where)


def upgrade(doc: object, where: str = "(backup)") -> object:
    """An older document in today's shape (a checkpoint without predecessor): format 1's
    digests were all SHA-256, named sha256; formats 1 and 2 carry no sender_key (the
    device makes a new one); formats 1 to 3 carry no name_b64 (their names are all
    valid UTF-8). Anything malformed is left for the checks to name."""
    if not isinstance(doc, dict):
        return doc
    fmt = doc.get("format")
    if fmt == FORMAT or fmt is None:
        return doc
    if fmt in (4, 5):  # 5 only adds an optional key, 6 an optional list (segments)
        return {**doc, "format": FORMAT}
    if fmt not in (1, 2, 3):
        raise IntegrityError(f"manifest format {fmt!r} is not read by this build (backup "
                             f"{where}); upgrade dispersiond")
    if fmt == 1:
        try:
            doc = _from_format_1(doc)
        except (KeyError, TypeError, AttributeError):
            raise IntegrityError(f"manifest backup {where} is malformed: a format-1 entry "
                                 "lacks its fields (not used)") from None
    seq = doc.get("seq")
    return {**doc, "format": FORMAT, "kind": "checkpoint", "base": seq, "prev": None,
            "removed": [], "audit": doc.get("audit", []),
            "audit_head": doc.get("audit_head")}


def _from_format_1(doc: dict) -> dict:
    def renamed(d: dict, **new_from_old: str) -> dict:
        kept = {k: v for k, v in d.items() if k not in new_from_old.values()}
        return {**kept, **{new: d[old] for new, old in new_from_old.items()}}

    files = [dict(renamed(e, digest="sha256", prf_digest="prf_sha256"),
                  digest_alg=digests.LEGACY,
                  objects=[renamed(o, digest="sha256") for o in e["objects"]])
             for e in doc["files"]]
    return dict(doc, files=files)


@dataclass
class Replayed:
    """The state a chain of backups describes (checkpoint, then each delta in order)."""
    seq: int = 0
    files: dict[str, dict] = field(default_factory=dict)
    audit: dict[int, dict] = field(default_factory=dict)
    audit_head: str | None = None
    sender_key: str | None = None

    def as_backup_doc(self) -> dict:
        """What share/device.py reads from a backup."""
        return {"seq": self.seq, "sender_key": self.sender_key} if self.sender_key else {
            "seq": self.seq}


def replay(chain: list[dict]) -> Replayed:
    """Apply checked documents, oldest (a checkpoint) first."""
    out = Replayed()
    for doc in chain:
        if doc["kind"] == "checkpoint":
            out.files, out.audit = {}, {}
        for fid in doc["removed"]:
            out.files.pop(fid, None)
        out.files.update({e["file_id"]: e for e in doc["files"]})
        out.audit.update({a["seq"]: a for a in doc["audit"]})
        out.seq, out.audit_head = doc["seq"], doc["audit_head"] or out.audit_head
        out.sender_key = doc.get("sender_key") or out.sender_key
    return out


def rows_of(state: Replayed) -> list[tuple[dict, list[dict]]]:
    """(file row fields, its object rows) for the state database."""
    return [({**_row_fields(e), "name": from_b64(e["name"], e.get("name_b64"))},
             [{**{k: o[k] for k in OBJECT_FIELDS}, "pack_digest": o.get("pack_digest")}
              for o in e["objects"]])
            for e in state.files.values()]


def _row_fields(e: dict) -> dict:
    """An entry's file columns: its identity, and its layout converted in layout.py."""
    return {"file_id": e["file_id"], "name": e["name"], "mtime": e["mtime"],
            "created": e["created"], **Layout.of_entry(e).row_fields()}


def load_into(db: StateDB, doc: dict) -> int:
    """Rebuild file, object and audit rows from one complete backup (a checkpoint or an
    older format); returns the number of files."""
    doc = manifest_doc.check(upgrade(doc), f"#{doc.get('seq')}")
    state = replay([doc])
    db.load_backup(rows_of(state), [state.audit[s] for s in sorted(state.audit)],
                   state.audit_head, state.seq)
    return len(state.files)
