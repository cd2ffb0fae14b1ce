"""`dispersiond open-share BUNDLE --identity KEYFILE --out PATH`: the recipient's side."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..identity import load_identity
from ..share import open_bundle
from ._common import add_json, ask_passphrase, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("open-share", help="open a share bundle (recipient side; no config "
                                          "needed)",
                       description="Open BUNDLE with your identity file: fetch the public "
                                   "objects through the bundle's links (any k of n shards), "
                                   "check every digest, decode, check the original's SHA-256 "
                                   "and only then write PATH. Needs no configuration and no "
                                   "cloud credentials.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--identity", "-i", required=True, metavar="KEYFILE",
                   help="your identity file (from 'dispersiond keygen')")
    p.add_argument("--out", "-o", required=True, metavar="PATH",
                   help="file to write (or a folder, if the bundle carries the file name)")
    p.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    ident = load_identity(args.identity, lambda: ask_passphrase().encode())
    with transfer_progress("fetching", None, not args.json) as adv:
        res = open_bundle(Path(args.bundle), ident, Path(args.out), force=args.force,
                          progress=adv)
    if args.json:
        emit_json(res.as_dict())
    else:
        print(f"wrote {res.path} ({res.size} bytes, {res.digest_alg} {res.digest} verified)")
    return 0
