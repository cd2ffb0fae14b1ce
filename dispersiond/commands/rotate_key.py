"""`dispersiond rotate-key`: a new master key; standalone public objects stay untouched,
packs are written again under the new key."""
from __future__ import annotations

import argparse
import sys

from ..ops.rotate_key import rotate_key
from ..archive import open_archive
from ..config import find_config, load_config
from ._common import add_config, add_json, ask_passphrase, emit_json

NEW_PASSPHRASE_ENV = "DISPERSIOND_NEW_PASSPHRASE"


def register(sub) -> None:
    p = sub.add_parser("rotate-key", help="switch to a new master key (re-wraps private "
                                          "containers only)",
                       description="Switch to a new master key: a new random key file, "
                                   "or, for a passphrase key, a new passphrase (from "
                                   "$DISPERSIOND_NEW_PASSPHRASE, or asked for) and a new salt "
                                   "written into the config. Re-wrap every private container "
                                   "(on this device and on the private stores) and re-seal "
                                   "the manifest backups. No standalone public object is "
                                   "rewritten; packs (small files' fragments) are written "
                                   "again under the new key, their members unchanged. Safe "
                                   "to run again after an interruption.")
    add_config(p)
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = find_config(getattr(args, "config", None))
    cfg = load_config(path)
    with open_archive(cfg, exclusive=True) as v:
        res = rotate_key(v, config_path=path, new_passphrase=lambda: ask_passphrase(
            confirm=True, min_len=12, env=NEW_PASSPHRASE_ENV, what="new passphrase").encode())
    if args.json:
        emit_json(res)
    else:
        print(f"new master key {res['new_key_id']}: {res['containers_rewrapped']} private "
              f"containers re-wrapped, {res['private_backups_rewritten']} backups rewritten, "
              f"{res['public_objects_rewritten']} public objects rewritten, "
              f"{res['public_packs_remasked']} public packs re-masked")
        if res["packed_members_unreadable"]:
            print(f"{res['packed_members_unreadable']} packed member(s) could not be read and "
                  "are marked for 'dispersiond repair'", file=sys.stderr)
        if cfg.key.passphrase_env is not None:
            print(f"{path} now holds the new salt; set {cfg.key.passphrase_env} to the new "
                  "passphrase wherever the service reads it", file=sys.stderr)
    return 0
