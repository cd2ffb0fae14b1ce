"""`dispersiond requests [add FILE | approve ID | deny ID]`: the device owner's side of
consent requests: see who asks for what, and decide each one."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DispersiondError
from ..share import consent
from ..share.issue import DEFAULT_EXPIRES
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("requests", help="list, receive, approve or deny consent requests",
                       description="Without an action: the pending consent requests, who "
                                   "asks (the configured recipient and role), which records, "
                                   "why and until when. 'add FILE' verifies and stores a "
                                   "request; 'approve ID' writes the bundle(s) (de-identified "
                                   "unless the recipient is a doctor) into --out or "
                                   "STATE_DIR/outbox/RECIPIENT; 'deny ID' records a denial "
                                   "and writes nothing. Every step is audited.")
    add_config(p)
    add_json(p)
    p.add_argument("--all", action="store_true", help="also list decided requests")
    p.set_defaults(func=_list)
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    a = acts.add_parser("add", help="verify and store a request file")
    a.add_argument("file", metavar="FILE")
    add_config(a)
    add_json(a)
    a.set_defaults(func=_add)
    ap = acts.add_parser("approve", help="approve a request: write its bundle(s)")
    ap.add_argument("id", metavar="ID")
    ap.add_argument("--out", metavar="DIR", help="folder for the bundles")
    ap.add_argument("--expires", default=DEFAULT_EXPIRES, metavar="DURATION",
                    help=f"link lifetime of a doctor's bundles (default {DEFAULT_EXPIRES})")
    add_config(ap)
    add_json(ap)
    ap.set_defaults(func=_approve)
    d = acts.add_parser("deny", help="deny a request (the requester is told nothing)")
    d.add_argument("id", metavar="ID")
    d.add_argument("--note", metavar="TEXT", help="your note, kept in the audit log")
    add_config(d)
    add_json(d)
    d.set_defaults(func=_deny)


def _list(args: argparse.Namespace) -> int:
    with open_archive(config(args)) as v:
        rows = consent.pending(v, args.all)
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print("no pending consent requests" if not args.all else "no consent requests")
    for r in rows:
        scope = r["records"]
        what = (f"{len(scope['ids'])} record(s) by id" if "ids" in scope else
                f"{scope.get('kind') or 'any kind'} from {scope.get('since') or 'any date'} "
                f"to {scope.get('until') or 'any date'}")
        print(f"{r['id']}  {r['state']:8}  {r['recipient']} ({r['role']}, calls itself "
              f"{r['requester']}) asks for {what}; gets {r['gets']}; valid until "
              f"{r['valid_until']}; purpose: {r['purpose']}")
    return 0


def _add(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        with path.open("rb") as fh:
            data = fh.read(65 << 10)
    except OSError as exc:
        raise DispersiondError(f"cannot read request file {path}: {exc.strerror}") from None
    with open_archive(config(args)) as v:
        got = consent.receive(v, data)
        row = consent.describe(v, v.db.request_row(got.id))
    if args.json:
        emit_json(row)
    else:
        print(f"request {got.id} from {got.recipient} stored as pending: review it with "
              "'dispersiond requests', then approve or deny it")
    return 0


def _approve(args: argparse.Namespace) -> int:
    with open_archive(config(args)) as v:
        res = consent.approve(v, args.id, Path(args.out) if args.out else None, args.expires)
    if args.json:
        emit_json(res)
    else:
        print(f"approved request {res['id']} for {res['recipient']}: "
              f"{len(res['bundles'])} bundle(s) written" +
              "".join(f"\n  {p}" for p in res["bundles"]))
        for s in res["skipped"]:
            print(f"  left out {s['file_id']}: {s['reason']}")
    return 0


def _deny(args: argparse.Namespace) -> int:
    with open_archive(config(args)) as v:
        res = consent.deny(v, args.id, args.note)
    if args.json:
        emit_json(res)
    else:
        print(f"denied request {res['id']} from {res['recipient']} (audited; nothing was "
              "written for the requester)")
    return 0
