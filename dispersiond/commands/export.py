"""`dispersiond export --to RECIPIENT --out FILE`: a study export, many records in one
bundle, de-identified as the recipient's role requires, with a manifest inside."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from ..share.errors import ShareRefused
from ..share.export import _audit, select, write_inline
from ..share.inline import KINDS
from ..share.roles import check_override
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("export", help="export many records to one recipient in one bundle "
                                      "(de-identified as the role requires)",
                       description="Restore and verify every protected record that matches, "
                                   "de-identify each under RECIPIENT's policy (unless the "
                                   "recipient is a doctor, or --identified --reason), encode "
                                   "each afresh and write one signed bundle holding them and a "
                                   "manifest (pseudonymous ids, kinds, sizes, digests, "
                                   "warnings). 'open-share' extracts it into a folder. A record "
                                   "that cannot be de-identified is left out and listed here.")
    add_config(p)
    p.add_argument("--to", required=True, metavar="RECIPIENT")
    p.add_argument("--out", required=True, metavar="FILE", help="bundle file (or a folder)")
    p.add_argument("--since", metavar="DATE", type=_date, help="records dated on or after "
                                                              "DATE (YYYY-MM-DD, UTC)")
    p.add_argument("--until", metavar="DATE", type=_date, help="records dated on or before DATE")
    p.add_argument("--kind", choices=KINDS, help="only records of this format")
    p.add_argument("--name", metavar="GLOB", help="only records whose file name matches")
    p.add_argument("--identified", "--override-deid", action="store_true",
                   help="records as stored to a non-doctor (needs --reason; audited)")
    p.add_argument("--reason", metavar="TEXT", help="why (goes to the audit log)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle file")
    add_json(p)
    p.set_defaults(func=_run)


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-03-14") from None


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg) as v:
        rcpt = cfg.recipient(args.to)
        if rcpt is None:
            _audit(v, "share-refused", None, recipient=args.to, via="export",
                    reason="recipient not in the config")
            raise ShareRefused(f"share refused: recipient {args.to!r} is not in the config's "
                               "recipients; add its name, public_key and role first")
        try:
            reason = check_override(rcpt, args.identified, args.reason)
        except ShareRefused as exc:
            _audit(v, "share-refused", None, recipient=rcpt.name, via="export",
                    reason=str(exc).removeprefix("share refused: "))
            raise
        files = select(v, kind=args.kind, since=args.since, until=args.until,
                       name_glob=args.name)
        res = write_inline(v, rcpt, files, Path(args.out), identified=bool(reason),
                           reason=reason, kind=args.kind, overwrite=args.force)
    if args.json:
        emit_json(res.as_dict())
        return 0
    what = "de-identified records" if res.deidentified else "records as stored"
    print(f"exported {res.records} {what} to {res.recipient}: {res.path} "
          f"({res.warnings} warning(s) in its manifest; signed by this device, fingerprint "
          f"{res.sender_fingerprint})")
    for s in res.skipped:
        print(f"dispersiond: left out {s['file_id']}: {s['reason']}", file=sys.stderr)
    return 0


