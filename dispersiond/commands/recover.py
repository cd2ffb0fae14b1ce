"""`dispersiond recover`: a blank device + config + key -> the full state again."""
from __future__ import annotations

import argparse

from ..vault import open_vault
from ..maintenance import recover
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("recover", help="rebuild the local state from the manifest backups",
                       description="On a new or wiped device: read the newest encrypted "
                                   "manifest backup from the private stores, rebuild the state "
                                   "database and fetch the private containers.")
    add_config(p)
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_vault(cfg, exclusive=True) as v:
        res = recover(v)
    if args.json:
        emit_json(res)
    else:
        print(f"recovered {res['files']} files from manifest backup #{res['manifest_seq']} on "
              f"store {res['from_store']}; fetched {res['private_containers_fetched']} private "
              "containers")
    return 0
