"""`dispersiond verify [--deep]`: are all copies there and intact?"""
from __future__ import annotations

import argparse

from ..ops.verify import verify
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("verify", help="check every stored object (exit 1 if any problem)",
                       description="Shallow (default): every object exists with the right size, "
                                   "and the store's own hash matches where it keeps one of the "
                                   "same kind; a pack is checked once for all its members; "
                                   "nothing is downloaded. --deep: download every object and "
                                   "pack and check its digests, a pack's index, and each of "
                                   "its members.")
    add_config(p)
    p.add_argument("--deep", action="store_true", help="download and check every byte")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg) as v:
        with transfer_progress("verifying", None, args.deep and not args.json) as adv:
            rep = verify(v, deep=args.deep, progress=adv)
    if args.json:
        emit_json(rep.as_dict())
    else:
        print(f"{rep.files} files, {rep.objects} objects checked "
              f"({'deep' if args.deep else 'shallow'}): {rep.ok} ok, {len(rep.findings)} problems")
        for p in rep.findings:
            shard = f" shard {p.shard}" if p.shard is not None else ""
            detail = f"; {p.detail}" if p.detail else ""
            print(f"  {p.file_id[:12]}  {p.role}{shard} on {p.store}: {p.problem} "
                  f"({p.object}{detail})")
        for fid in rep.unrestorable:
            print(f"  {fid[:12]}  NOT RESTORABLE from what is left")
        if rep.findings:
            print("run 'dispersiond repair' to rebuild the bad copies from the good ones")
    return 1 if rep.findings or rep.unrestorable else 0
