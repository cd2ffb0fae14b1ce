"""A hash-chained, keyed audit log of shares, refusals, restores, forgets and rotations.

Entry i carries `prev` (the hash of entry i-1, or 64 zeros) and
`hash = HMAC-SHA256(K_audit, prev || canonical JSON of (seq, ts, event, file_id, detail))`,
with K_audit derived from the master key. Editing, deleting or reordering any
entry breaks the chain; forging a new chain needs the key. The newest (seq, hash)
is kept in meta with a MAC under a second key from the master key (so it cannot be
moved back to an earlier entry) and in every manifest backup, and a head lower than
a backed-up one is refused, so cutting entries off the end is caught too.
"""
from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass

from .keys import subkey
from .state import StateDB, dumps

GENESIS = "0" * 64
LEGACY_HEAD = "legacy"  # a head recorded before heads were authenticated (schema <= 3)


def head_mac(master_key: bytes, seq: int, h: str) -> str:
    return hmac.new(subkey(master_key, "audit head"), f"{seq}:{h}".encode(),
                    "sha256").hexdigest()


def sealed_head(master_key: bytes, seq: int, h: str) -> str:
    """The recorded form: 'seq:hash:mac'."""
    return f"{seq}:{h}:{head_mac(master_key, seq, h)}"


def seal_head(db: StateDB, master_key: bytes) -> None:
    """Record the newest entry as the authenticated head (after recover, whose backup
    was authenticated; after rotation, under the new key)."""
    with db.tx() as conn:
        tail = db.audit_tail(conn)
        if tail:
            db.set_audit_head(sealed_head(master_key, *tail), conn)


def parse_head(mark: str) -> tuple[int, str, str | None] | None:
    """(seq, hash, mac or None) of a recorded or backed-up head; None if unreadable."""
    parts = mark.split(":")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1], parts[2] if len(parts) == 3 else None


def _mac(key: bytes, prev: str, seq: int, ts: float, event: str, file_id: str | None,
         detail: str) -> str:
    body = dumps({"seq": seq, "ts": ts, "event": event, "file_id": file_id,
                  "detail": json.loads(detail)})
    return hmac.new(key, (prev + body).encode(), "sha256").hexdigest()


def append(db: StateDB, master_key: bytes, event: str, file_id: str | None = None,
           **detail) -> int:
    """Add one entry; returns its sequence number."""
    return append_many(db, master_key, [(event, file_id, detail)])


def append_many(db: StateDB, master_key: bytes,
                entries: list[tuple[str, str | None, dict]]) -> int:
    """Add (event, file_id, detail) entries in order, in one transaction (one fsync
    however many: a bulk restore records each of its files); returns the last sequence
    number."""
    if not entries:
        raise ValueError("append_many needs at least one entry")
    key = subkey(master_key, "audit")
    with db.tx() as conn:
        tail = db.audit_tail(conn)
        seq, prev = tail if tail else (0, GENESIS)
        for event, file_id, detail in entries:
            text = dumps(detail)
            seq, ts = seq + 1, round(time.time(), 6)
            h = _mac(key, prev, seq, ts, event, file_id, text)
            db.add_audit_row(conn, seq, ts, event, file_id, text, prev, h)
            prev = h
        db.set_audit_head(sealed_head(master_key, seq, prev), conn)
        # The next manifest backup carries the new head, so cutting entries off the
        # end of the log is caught against it too.
        db.mark_manifest_dirty(conn)
    return seq


@dataclass
class Entry:
    seq: int
    ts: float
    event: str
    file_id: str | None
    detail: dict
    hash: str


def entries(db: StateDB) -> list[Entry]:
    return [Entry(r["seq"], r["ts"], r["event"], r["file_id"], json.loads(r["detail"]), r["hash"])
            for r in db.audit_rows()]


def verify(db: StateDB, master_key: bytes, anchor: str | None = None) -> list[str]:
    """Problems found in the chain (empty when intact). `anchor` is a known 'seq:hash' head."""
    key = subkey(master_key, "audit")
    problems = []
    prev, expect_seq = GENESIS, 1
    rows = db.audit_rows()
    for r in rows:
        if r["seq"] != expect_seq:
            problems.append(f"entry {expect_seq} is missing (next is {r['seq']})")
        if r["prev"] != prev:
            problems.append(f"entry {r['seq']}: does not follow the entry before it "
                            "(deleted or reordered entries)")
        try:
            good = _mac(key, r["prev"], r["seq"], r["ts"], r["event"], r["file_id"], r["detail"])
        except (ValueError, TypeError):
            good = ""
        if not hmac.compare_digest(good, r["hash"]):
            problems.append(f"entry {r['seq']}: content was altered (hash mismatch)")
        prev, expect_seq = r["hash"], r["seq"] + 1
    problems += head_problems(master_key, db.audit_head(), rows, anchor)
    return problems


def head_problems(master_key: bytes, head: str | None, rows: list,
                  anchor: str | None) -> list[str]:
    """What is wrong with the recorded head (its MAC, its entry among `rows`) and with
    a backup's `anchor`."""
    out = []
    if head:
        got = parse_head(head)
        if got is None:
            out.append("the recorded head is unreadable: the state database was edited")
        elif got[2] is None or (got[2] != LEGACY_HEAD and not hmac.compare_digest(
                got[2], head_mac(master_key, got[0], got[1]))):
            out.append(f"the recorded head (entry {got[0]}) is not authenticated: it was "
                       "moved or rewritten outside dispersiond (entries cut off the end?)")
    elif rows:
        out.append("the recorded head is missing: the state database was edited")
    for label, mark in (("recorded head", head), ("manifest backup head", anchor)):
        got = parse_head(mark) if mark else None
        if got is None:
            continue
        seq, h = got[0], got[1]
        match = [r for r in rows if r["seq"] == seq]
        if not match or match[0]["hash"] != h:
            out.append(f"the {label} (entry {seq}) is no longer in the log: entries were "
                       "removed or rewritten")
    return out


def cut_below(db: StateDB, backed_up: int | None) -> str | None:
    """A problem if the log ends before entry `backed_up`, which a landed backup holds."""
    tail = db.audit_last_seq()
    if backed_up and tail < backed_up:
        return (f"the log ends at entry {tail} but a manifest backup holds entries up to "
                f"{backed_up}: entries were cut off the end")
    return None


def rechain(db: StateDB, old_key: bytes, new_key: bytes) -> bool:
    """Key rotation: re-MAC every entry under `new_key`, after checking the chain under
    `old_key`. Returns False, changing nothing, when the chain does not verify under
    `old_key` (a tampered log is never laundered into a valid one). Idempotent: a chain
    already under `new_key` (a resumed rotation) is left as it is."""
    if not verify(db, new_key):
        return True
    if verify(db, old_key):
        return False
    key = subkey(new_key, "audit")
    with db.tx() as conn:
        rows = db.audit_rows(conn)
        prev = GENESIS
        for r in rows:
            h = _mac(key, prev, r["seq"], r["ts"], r["event"], r["file_id"], r["detail"])
            db.rechain_row(conn, r["seq"], prev, h)
            prev = h
        if rows:
            db.set_audit_head(sealed_head(new_key, rows[-1]["seq"], prev), conn)
    return True
