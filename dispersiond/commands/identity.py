"""`dispersiond identity` (the sending device's signing key, for its recipients) and
`dispersiond trust NAME KEY` (a recipient pins a sending device)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..identity import fingerprint
from ..share import device
from ..share.senders import senders_path, trust
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("identity", help="print this device's sender key (give it to "
                                        "recipients)",
                       description="Print the public key this device signs its share bundles "
                                   "with, and its short fingerprint. Give both to each "
                                   "recipient: they pin it with 'dispersiond trust', and "
                                   "open-share then shows your name on every bundle and "
                                   "refuses bundles anyone else made. The key is made on "
                                   "first use and travels in the manifest backups.")
    add_config(p)
    add_json(p)
    p.set_defaults(func=_identity)

    t = sub.add_parser("trust", help="recipient side: trust a sending device's key",
                       description="Add NAME and the sending device's key (from its "
                                   "'dispersiond identity') to the known-senders file next to "
                                   "your identity (KEYFILE.senders). Compare the fingerprint "
                                   "printed here with the one the sender reads out to you.")
    t.add_argument("name", metavar="NAME", help="your name for the sender (e.g. jane-doe)")
    t.add_argument("key", metavar="KEY", help="the sender's key, dspsig1...")
    t.add_argument("--identity", "-i", required=True, metavar="KEYFILE",
                   help="your identity file (from 'dispersiond keygen')")
    add_json(t)
    t.set_defaults(func=_trust)


def _identity(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg) as v:
        key = device.load_or_create(v.root, v.key)
    if args.json:
        emit_json({"sender_key": key.public, "fingerprint": key.fingerprint})
    else:
        print(key.public)
        print(f"fingerprint {key.fingerprint}")
    return 0


def _trust(args: argparse.Namespace) -> int:
    path = senders_path(Path(args.identity))
    key, added = trust(path, args.name, args.key)
    fpr = fingerprint(key)
    if args.json:
        emit_json({"name": args.name, "fingerprint": fpr, "senders_file": str(path),
                   "added": added})
    else:
        print(f"{'trusted' if added else 'already trusted'}: {args.name} (fingerprint {fpr}) "
              f"in {path}")
    return 0


