"""`dispersiond open-share BUNDLE --identity KEYFILE --out PATH`: the recipient's side."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..identity import load_identity
from ..share import open_bundle
from ..share.senders import pins, senders_path
from ..share.unpack import OpenedInline
from ._common import add_json, ask_passphrase, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("open-share", help="open a share bundle (recipient side; no config "
                                          "needed)",
                       description="Open BUNDLE with your identity file: fetch the public "
                                   "objects through the bundle's links (any k of n shards), "
                                   "check every digest, decode, check the original's SHA-256 "
                                   "and only then write PATH. Needs no configuration and no "
                                   "cloud credentials. The bundle must be signed by a sender "
                                   "you trust: one in KEYFILE.senders (see 'dispersiond "
                                   "trust') or given with --sender.")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--identity", "-i", required=True, metavar="KEYFILE",
                   help="your identity file (from 'dispersiond keygen')")
    p.add_argument("--out", "-o", required=True, metavar="PATH",
                   help="file to write (or a folder, if the bundle carries the file name; "
                        "an export opens into a folder with its manifest.json)")
    p.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    p.add_argument("--sender", action="append", default=[], metavar="KEY",
                   help="trust this sender key (dspsig1..., from the sender's 'dispersiond "
                        "identity') for this bundle; may be repeated")
    p.add_argument("--senders", metavar="FILE",
                   help="known-senders file (default: KEYFILE.senders)")
    p.add_argument("--accept-unknown-sender", action="store_true",
                   help="open a bundle signed by a device you have not trusted (its "
                        "fingerprint is printed: check it with the sender)")
    p.add_argument("--accept-unsigned", action="store_true",
                   help="open an old-format bundle that carries no sender signature (anyone "
                        "who knows your public key could have made it)")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    ident = load_identity(args.identity, lambda: ask_passphrase().encode())
    known = pins(ident, args.sender, Path(args.senders) if args.senders else None)
    with transfer_progress("fetching", None, not args.json) as adv:
        res = open_bundle(Path(args.bundle), ident, Path(args.out), force=args.force,
                          progress=adv, senders=known,
                          accept_unknown_sender=args.accept_unknown_sender,
                          accept_unsigned=args.accept_unsigned)
    s = res.sender
    _warn_sender(s, res.path, args.identity)
    if isinstance(res, OpenedInline):
        for w in res.warnings:
            print(f"dispersiond: WARNING: {w}", file=sys.stderr)
        if args.json:
            emit_json(res.as_dict())
        else:
            what = "de-identified record(s)" if res.deidentified else "record(s)"
            where = f" with {res.manifest.name}" if res.manifest else ""
            print(f"wrote {len(res.records)} {what} to {res.path}{where}, every digest "
                  f"verified, from {s.describe() if s else 'an unknown sender'}")
        return 0
    if args.json:
        emit_json(res.as_dict())
    else:
        print(f"wrote {res.path} ({res.size} bytes, {res.digest_alg} {res.digest} verified) "
              f"from {s.describe() if s else 'an unknown sender'}")
    return 0


def _warn_sender(s, path: Path, identity: str) -> None:
    if s is not None and (not s.signed or s.name is None):
        print(f"dispersiond: WARNING: {path} came from {s.describe()}: nothing proves who "
              "made it; do not rely on it as a record from your patient"
              + (f" (to trust the sender: dispersiond trust NAME {s.key} --identity "
                 f"{identity}; senders file {senders_path(Path(identity))})"
                 if s.key else ""), file=sys.stderr)
