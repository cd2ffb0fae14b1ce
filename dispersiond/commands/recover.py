"""`dispersiond recover`: a blank device + config + key -> the full state again."""
from __future__ import annotations

import argparse
import sys

from ..ops.recover import recover
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("recover", help="rebuild the local state from the manifest backups",
                       description="On a new or wiped device: read the manifest backups from "
                                   "the private stores, load the newest chain (a checkpoint "
                                   "and every delta after it) that verifies, rebuild the "
                                   "state database and fetch the private containers. A gap "
                                   "in the chain, or a store older than another, is reported; "
                                   "loading an older state than one known to exist is "
                                   "refused unless --accept-older.")
    add_config(p)
    p.add_argument("--accept-older", action="store_true",
                   help="load the newest complete chain even though a newer backup is known "
                        "to exist (what came after it is lost)")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg, exclusive=True) as v:
        res = recover(v, accept_older=args.accept_older)
    if args.json:
        emit_json(res)
        return 0
    for w in res["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for m in res["missing_containers"]:
        print(f"warning: file {m['file_id']}: no intact private container ({m['error']}); it "
              "cannot be restored until a copy is put back", file=sys.stderr)
    print(f"recovered {res['files']} files from manifest backup #{res['manifest_seq']} "
          f"(chain {_span(res['chain'])}) on store {res['from_store']}; fetched "
          f"{res['private_containers_fetched']} private containers")
    return 0


def _span(seqs: list[int]) -> str:
    return f"#{seqs[0]}" if len(seqs) == 1 else f"#{seqs[0]}..#{seqs[-1]}"
