"""`dispersiond share ID|NAME --to RECIPIENT`: a bundle that opens one file for one recipient."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..share import DEFAULT_EXPIRES, create_bundle
from ..share.export import ExportResult
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("share", help="share one file with a configured recipient (bundle with "
                                     "time-limited links)",
                       description="Write a share bundle: the file's private container "
                                   "re-encrypted to RECIPIENT's key, and time-limited read "
                                   "links to its public objects (S3 presigned URL, GCS signed "
                                   "URL, Azure SAS; a file:// path for local stores). The "
                                   "bundle opens this one file and nothing else; no file name "
                                   "is included unless --with-name. Refused for recipients "
                                   "not in the config. Every share and refusal is audited. "
                                   "The bundle is signed with this device's key (see "
                                   "'dispersiond identity'), which the recipient pins. "
                                   "What a bundle holds depends on the recipient's role: a "
                                   "doctor gets the record as stored; an institute, the "
                                   "authority or other recipient a de-identified copy carried "
                                   "inside the bundle, unless --identified --reason TEXT.")
    add_config(p)
    p.add_argument("ref", metavar="ID|NAME", help="file id (or its first 6+ digits) or name")
    p.add_argument("--to", required=True, metavar="RECIPIENT",
                   help="a recipient name from the config's 'recipients:'")
    p.add_argument("--expires", default=DEFAULT_EXPIRES, metavar="DURATION",
                   help=f"link lifetime, 1s..7d (default: {DEFAULT_EXPIRES})")
    p.add_argument("--out", metavar="FILE",
                   help="bundle file (default: ./<id>-<recipient>.dspshare)")
    p.add_argument("--with-name", action="store_true",
                   help="include the original file name (off by default: names can identify "
                        "a patient)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle file")
    p.add_argument("--identified", "--override-deid", action="store_true",
                   help="give a non-doctor recipient the record as stored (needs --reason; "
                        "audited)")
    p.add_argument("--reason", metavar="TEXT",
                   help="why an identified share to a non-doctor is needed (audit log)")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg) as v:
        res = create_bundle(v, args.ref, args.to, args.expires, with_name=args.with_name,
                            out=Path(args.out) if args.out else None, overwrite=args.force,
                            identified=args.identified, reason=args.reason)
    if args.json:
        emit_json(res.as_dict())
    elif isinstance(res, ExportResult):
        print(f"shared a de-identified copy with {res.recipient}: {res.path} (carried inside "
              f"the bundle, {res.warnings} warning(s); signed by this device, fingerprint "
              f"{res.sender_fingerprint})")
    else:
        print(f"shared {res.file_id} with {res.recipient}: {res.path} ({res.links} links, "
              f"valid until {res.as_dict()['expires']}; signed by this device, fingerprint "
              f"{res.sender_fingerprint})")
    return 0
