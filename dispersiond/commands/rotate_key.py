"""`dispersiond rotate-key`: a new master key; public objects stay untouched."""
from __future__ import annotations

import argparse

from ..maintenance import rotate_key
from ..vault import open_vault
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("rotate-key", help="switch to a new master key (re-wraps private "
                                          "containers only)",
                       description="Write a new random master key, re-wrap every private "
                                   "container (on this device and on the private stores) and "
                                   "re-seal the manifest backups. No public object is "
                                   "rewritten. Safe to run again after an interruption.")
    add_config(p)
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_vault(cfg, exclusive=True) as v:
        res = rotate_key(v)
    if args.json:
        emit_json(res)
    else:
        print(f"new master key {res['new_key_id']}: {res['containers_rewrapped']} private "
              f"containers re-wrapped, {res['private_backups_rewritten']} backups rewritten, "
              f"{res['public_objects_rewritten']} public objects rewritten")
    return 0
