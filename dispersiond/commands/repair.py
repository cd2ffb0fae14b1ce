"""`dispersiond repair`: rebuild missing or corrupt copies from the survivors."""
from __future__ import annotations

import argparse

from ..ops.repair import repair
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("repair", help="rebuild missing or corrupt replicas and shards",
                       description="Verify (shallow, or --deep), then write a fresh copy of "
                                   "each bad object, rebuilt from intact replicas or any k "
                                   "shards, and retire the bad one. A damaged or lost pack is "
                                   "rewritten for its store under a new name: its intact "
                                   "members copied, the bad ones rebuilt.")
    add_config(p)
    p.add_argument("--deep", action="store_true", help="find damage by downloading everything")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg, exclusive=True) as v:
        with transfer_progress("repairing", None, not args.json) as adv:
            rep = repair(v, deep=args.deep, progress=adv)
    if args.json:
        emit_json(rep.as_dict())
    else:
        print(f"repaired {len(rep.repaired)} copies, {len(rep.failed)} could not be repaired"
              + (f"; {len(rep.repacked)} new packs" if rep.repacked else ""))
        for r in rep.repaired:
            print(f"  {r['file_id'][:12]}  {r['role']} on {r['store']}: rebuilt")
        for r in rep.failed:
            print(f"  {r['file_id'][:12]}  {r['role']} on {r['store']}: {r['error']}")
    return 1 if rep.failed else 0
