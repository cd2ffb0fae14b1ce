"""`dispersiond request --identity KEYFILE ... --out FILE`: the recipient's side of a
consent request (paper Fig. 5), signed with the key their identity derives."""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from ..fsutil import atomic_output
from ..identity import load_identity
from ..share.request_format import KINDS, SUFFIX, make
from ._common import add_json, ask_passphrase, emit_json


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-03-14") from None


def register(sub) -> None:
    p = sub.add_parser("request", help="recipient side: ask a patient's device for records "
                                       "(signed consent request; no config needed)",
                       description="Write a consent request signed with your identity: which "
                                   "records (--id, or --kind and a date range), why, and until "
                                   "when. Send the file to the patient; their device shows "
                                   "who asks and what, and they approve or deny it. The "
                                   "patient's config must list your request_key (printed by "
                                   "keygen).")
    p.add_argument("--identity", "-i", required=True, metavar="KEYFILE")
    p.add_argument("--as", dest="requester", metavar="NAME",
                   help="your name as the patient knows you (default: KEYFILE's name)")
    p.add_argument("--id", dest="ids", action="append", metavar="RECORD_ID",
                   help="a record id (32 hex digits, from a bundle the patient sent); "
                        "may be repeated")
    p.add_argument("--kind", choices=KINDS, help="records of this format")
    p.add_argument("--since", type=_date, metavar="DATE", help="records dated on or after DATE")
    p.add_argument("--until", type=_date, metavar="DATE", help="records dated on or before DATE")
    p.add_argument("--purpose", required=True, metavar="TEXT", help="why you ask (one line)")
    p.add_argument("--valid-until", required=True, type=_date, metavar="DATE",
                   help="the request lapses after this date")
    p.add_argument("--out", "-o", required=True, metavar="FILE",
                   help=f"request file to write (e.g. ask{SUFFIX})")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..errors import DispersiondError

    if args.ids and (args.kind or args.since or args.until):
        raise DispersiondError("give record ids (--id) or a kind and date range, not both")
    ident = load_identity(args.identity, lambda: ask_passphrase().encode())
    records = ({"ids": [i.strip().lower() for i in args.ids]} if args.ids else
               {k: getattr(args, k) for k in ("kind", "since", "until") if getattr(args, k)})
    name = args.requester or "".join(c if c.isalnum() or c in "-_." else "-"
                                     for c in Path(args.identity).stem) or "recipient"
    data = make(ident, name, records, args.purpose, args.valid_until)
    out = Path(args.out)
    try:
        with atomic_output(out, overwrite=False, mode=0o600) as f:
            f.write(data)
    except FileExistsError:
        raise DispersiondError(f"{out} exists; choose another --out") from None
    if args.json:
        emit_json({"path": str(out), "requester": name, "request_key": ident.request_key})
    else:
        print(f"wrote consent request {out} as {name} (request key {ident.request_key}): "
              "send it to the patient")
    return 0
