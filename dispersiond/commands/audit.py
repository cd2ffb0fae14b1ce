"""`dispersiond audit ls|verify`: the hash-chained log of shares, refusals, restores, ..."""
from __future__ import annotations

import argparse
import datetime as dt

from .. import audit
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("audit", help="show or verify the audit log (shares, refusals, "
                                     "restores, forgets, key rotations)",
                       description="Every share, refusal, restore, forget, re-key and key "
                                   "rotation is an entry in a hash-chained, keyed log in the "
                                   "state database: each entry carries the hash of the one "
                                   "before it.")
    add_config(p)
    asub = p.add_subparsers(dest="audit_command", metavar="ls|verify", required=True)
    ls = asub.add_parser("ls", help="list the entries")
    add_config(ls)
    ls.add_argument("--file", metavar="ID", help="only entries about this file id (prefix)")
    ls.add_argument("--event", help="only this event (share, share-refused, restore, ...)")
    add_json(ls)
    ls.set_defaults(func=_ls)
    ver = asub.add_parser("verify", help="check the chain; exit 1 and name every problem",
                          description="Recompute every entry's keyed hash and the chain, and "
                                      "the recorded head's MAC; also check the log against the "
                                      "manifest backups on the private stores (unless "
                                      "--offline): their newest head must be in it and it must "
                                      "not end before any entry a backup holds, which catches "
                                      "entries cut off the end.")
    add_config(ver)
    ver.add_argument("--offline", action="store_true",
                     help="do not read the newest manifest backup from the private stores")
    add_json(ver)
    ver.set_defaults(func=_verify)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ls(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg) as v:
        rows = audit.entries(v.db)
    if args.file:
        rows = [e for e in rows if e.file_id and e.file_id.startswith(args.file.lower())]
    if args.event:
        rows = [e for e in rows if e.event == args.event]
    if args.json:
        emit_json([{"seq": e.seq, "time": _iso(e.ts), "ts": e.ts, "event": e.event,
                    "file_id": e.file_id, "detail": e.detail, "hash": e.hash} for e in rows])
        return 0
    for e in rows:
        detail = " ".join(f"{k}={e.detail[k]}" for k in sorted(e.detail))
        print(f"{e.seq:>5}  {_iso(e.ts)}  {e.event:<14} {(e.file_id or '-')[:12]:<12}  "
              f"{detail}  [{e.hash[:12]}]")
    if not rows:
        print("no audit entries")
    return 0


def _verify(args: argparse.Namespace) -> int:
    cfg = config(args)
    notes: list[str] = []
    with open_archive(cfg) as v:
        tip = v.db.chain_tip()
        anchor, backed = (None, None) if args.offline else _backup_anchor(v, notes)
        problems = audit.verify(v.db, v.key, anchor)
        cut = audit.cut_below(v.db, max(backed or 0, tip.audit_seq if tip else 0))
        if cut:
            problems.append(cut)
        count = v.db.audit_count()
    if args.json:
        emit_json({"ok": not problems, "entries": count, "problems": problems,
                   "backup_anchor": anchor, "backed_up_entries": backed, "notes": notes})
    else:
        for n in notes:
            print(f"note: {n}")
        if problems:
            print(f"audit log FAILED verification ({len(problems)} problems):")
            for p in problems:
                print(f"  {p}")
        else:
            print(f"audit log intact: {count} entries"
                  + (f", newest backup head {anchor.split(':')[0]} present" if anchor else ""))
    return 1 if problems else 0


def _backup_anchor(v, notes: list[str]) -> tuple[str | None, int | None]:
    """The audit head in the newest readable manifest backup, and the newest entry any
    backup holds (the log may not end before it)."""
    from ..ops.recover import choose, survey

    found, errors = survey(v)
    notes += [f"manifest backup not readable: {e}" for e in errors]
    if not found:
        notes.append("no manifest backup found: only the local chain was checked")
        return None, None
    choice = choose(found, list(v.cfg.private.stores))
    notes += choice.warnings if choice else []
    found = [f for f in found if f.doc["kind"] != "segment"]  # a checkpoint's entries
    if not found:
        notes.append("no manifest backup found: only the local chain was checked")
        return None, None
    newest = max(found, key=lambda f: f.seq).doc
    backed = max(_newest_entry(f.doc) for f in found)
    return newest.get("audit_head"), backed or None


def _newest_entry(doc: dict) -> int:
    seqs = [a["seq"] for a in doc["audit"]]
    if doc["audit_head"]:
        seqs.append(int(doc["audit_head"].split(":")[0]))
    return max(seqs, default=0)
