"""`dispersiond forget ID`: crypto-erasure of one file."""
from __future__ import annotations

import argparse

from ..display import shown
from ..ops.forget import forget
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("forget", help="erase a file for good (crypto-erasure)",
                       description="Delete every copy of the file's private container and its "
                                   "manifest entry, and its public objects unless "
                                   "--keep-public, and every copy the state directory holds "
                                   "(an original kept by 'after: keep', work folders); a copy "
                                   "outside it, your own, is named and left. A pack holding "
                                   "the container (with other files' containers) is rewritten "
                                   "without it at once, and the old pack deleted. Afterwards "
                                   "nobody can restore it; without the container the public "
                                   "bytes are noise.")
    add_config(p)
    p.add_argument("ref", metavar="ID|NAME")
    p.add_argument("--keep-public", action="store_true",
                   help="leave the (now undecipherable) standalone public objects in "
                        "place (a small file's public members stay in their packs until "
                        "'dispersiond prune' either way; no bundle links into a pack). An "
                        "earlier share bundle carries its own copy of the private "
                        "container, so it still opens the file until its links expire: "
                        "without this flag forget deletes the public objects and so "
                        "revokes every bundle")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg, exclusive=True) as v:
        res = forget(v, args.ref, keep_public=args.keep_public)
    if args.json:
        emit_json(res)
    else:
        print(f"forgot {res['file_id']}; deleted:")
        for d in res["deleted"]:
            print(f"  {d['role']:7} on {d['store']}: {d['object']}" + (f" ({d['note']})" if d.get("note") else ""))
        for d in res.get("in_packs", []):
            print(f"  {d['role']:7} on {d['store']}: left in pack {d['object']} as dead bytes "
                  "(noise without the container) until 'dispersiond prune'")
        for d in res["deferred"]:
            print(f"  {d['role']:7} on {d['store']}: NOT YET ({shown(d['error'])}); retried later")
        for path in res["removed_local"]:
            print(f"  local copy removed: {shown(path)}")
        for path in res["left"]:
            print(f"  your own copy is left in place: {shown(path)} (delete it if it must go too)")
    return 0
