"""`dispersiond restore ID|NAME`: rebuild a file bit-exact after checking every byte."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..display import as_text, shown
from ..ops.restore import restore, target_path
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("restore", help="rebuild a protected file (bit-exact, verified)",
                       description="Fetch the public fragment (any intact replica, or any k "
                                   "shards) and the private container, check every digest, "
                                   "decode, check the original's digest, and only then move "
                                   "the file into place.")
    add_config(p)
    p.add_argument("ref", metavar="ID|NAME", help="file id (or its first 6+ digits) or name")
    p.add_argument("--to", default=".", metavar="PATH",
                   help="output file, or folder to restore into (default: here)")
    p.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    dest = Path(args.to)
    with open_archive(cfg) as v:
        f = v.resolve(args.ref)
        out = target_path(f, dest)
        with transfer_progress("restoring", None, not args.json) as adv:
            restore(v, args.ref, dest, force=args.force, progress=adv)
    if args.json:
        emit_json({"file_id": f.file_id, "path": as_text(str(out)), "size": f.size,
                   "digest_alg": f.digest_alg, "digest": f.digest})
    else:
        print(f"restored {f.file_id} to {shown(out)} ({f.size} bytes, {f.digest_alg} verified)")
    return 0
