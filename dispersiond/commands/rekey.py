"""`dispersiond rekey ID`: fresh secret, new public objects, old ones deleted (revocation)."""
from __future__ import annotations

import argparse

from ..ops.rekey import rekey
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("rekey", help="re-encode a file with a fresh secret (revokes every "
                                     "share of it)",
                       description="Decode the file, encode it again with a fresh per-file "
                                   "secret under the same id, upload the new objects, commit, "
                                   "back up the manifest, and only then delete the old "
                                   "objects. Every share bundle issued earlier stops opening. "
                                   "It cannot claw back a copy a recipient already "
                                   "downloaded.")
    add_config(p)
    p.add_argument("ref", metavar="ID|NAME", help="file id (or its first 6+ digits) or name")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg, exclusive=True) as v:
        with transfer_progress("re-keying", None, not args.json) as adv:
            res = rekey(v, args.ref, adv)
    if args.json:
        emit_json(res)
        return 0
    print(f"re-keyed {res['file_id']}: {res['new_objects']} new objects uploaded, "
          + ("old objects deleted; earlier shares no longer open" if res["old_deleted"] else
             "old objects NOT yet deleted (no manifest backup landed); run rekey again later"))
    if res["share_copies_deleted"]:
        print(f"{res['share_copies_deleted']} copies behind earlier shares' links deleted: "
              "those links no longer open")
    if res["deletions_pending"]:
        print(f"{res['deletions_pending']} old objects wait for their store to answer; they "
              "are deleted on a later run")
    return 0
