"""`dispersiond audit ls|verify`: the hash-chained log of shares, refusals, restores, ..."""
from __future__ import annotations

import argparse
import datetime as dt

from .. import audit
from ..vault import open_vault
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
                          description="Recompute every entry's keyed hash and the chain; also "
                                      "check the newest head against the manifest backup on "
                                      "the private stores (unless --offline), which catches "
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
    with open_vault(cfg) as v:
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
    with open_vault(cfg) as v:
        anchor = None if args.offline else _backup_anchor(v, notes)
        problems = audit.verify(v.db, v.key, anchor)
        count = v.db.audit_count()
    if args.json:
        emit_json({"ok": not problems, "entries": count, "problems": problems,
                   "backup_anchor": anchor, "notes": notes})
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


def _backup_anchor(v, notes: list[str]) -> str | None:
    """The audit head recorded in the newest readable manifest backup, if any."""
    from backends import StoreError

    from .. import manifest
    from ..errors import DispersiondError

    best = None
    for store in v.cfg.private.stores:
        try:
            names = list(v.store(store).list(manifest.PREFIX))
        except (StoreError, KeyError) as exc:
            notes.append(f"manifest backups on {store} not checked: {exc}")
            continue
        for name in names:
            try:
                doc = manifest.open_sealed(v.key, v.store(store).get_bytes(name))
            except (StoreError, DispersiondError, ValueError) as exc:
                notes.append(f"manifest backup {store}/{name} not readable: {exc}")
                continue
            if best is None or doc["seq"] > best["seq"]:
                best = doc
    if best is None:
        notes.append("no manifest backup found: only the local chain was checked")
        return None
    return best.get("audit_head")
