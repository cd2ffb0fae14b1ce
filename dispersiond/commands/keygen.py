"""`dispersiond keygen --out NAME`: an X25519 identity for a share recipient (its
request-signing key derives from it: identity.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..identity import Identity
from ._common import add_json, ask_passphrase, emit_json


def register(sub) -> None:
    p = sub.add_parser("keygen", help="make a recipient identity (X25519 key pair) for sharing",
                       description="Write a new X25519 identity to NAME (mode 0600, never "
                                   "overwritten) and its public key to NAME.pub, and print the "
                                   "public key. The recipient (doctor, institute, authority) "
                                   "runs this and keeps NAME; the public key goes into the "
                                   "sender's config under 'recipients:'.")
    p.add_argument("--out", required=True, metavar="NAME", help="identity file to write")
    p.add_argument("--passphrase", action="store_true",
                   help="seal the secret key under a passphrase (read from "
                        "$DISPERSIOND_PASSPHRASE, or asked for twice): a copied file alone "
                        "then opens nothing")
    p.add_argument("--role", default="doctor",
                   choices=["doctor", "institute", "authority", "other"],
                   help="role shown in the config snippet (default: doctor)")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    phrase = ask_passphrase(confirm=True, min_len=12).encode() if args.passphrase else None
    ident = Identity.generate()
    ident.save(out, phrase)
    pub = out.with_name(out.name + ".pub")
    pub.write_text(ident.public + "\n")
    if args.json:
        emit_json({"identity": str(out), "public_key": ident.public, "public_key_file": str(pub),
                   "request_key": ident.request_key})
        return 0
    print(ident.public)
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in out.stem.lower()) or "recipient"
    print(f"identity written to {out} (keep it secret); public key in {pub}.\n"
          "The sender adds to their config:\n"
          "  recipients:\n"
          f"    - {{name: {name}, role: {args.role}, public_key: {ident.public},\n"
          f"       request_key: {ident.request_key}}}\n"
          "(request_key lets you send signed consent requests: 'dispersiond request')",
          file=sys.stderr)
    return 0
