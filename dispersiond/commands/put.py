"""`dispersiond put FILE...`: protect and disperse now."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..display import json_fields, shown
from ..errors import DispersiondError
from ..ops.protect import abandon_planned, finish, protect_file, resume, transfer_bytes
from ..state import FileState
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("put", help="protect files now and print their ids",
                       description="Selectively encrypt each FILE, upload the public fragment "
                                   "to the public stores and the private container to the "
                                   "private stores, and record it in the manifest. The files "
                                   "themselves are left where they are.")
    add_config(p)
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--resume", action="store_true",
                   help="finish files whose uploads failed earlier")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    paths = [Path(f) for f in args.files]
    for p in paths:
        if not p.is_file():
            raise DispersiondError(f"{shown(p)}: not a readable file")
    if not paths and not args.resume:
        raise DispersiondError("name at least one FILE (or --resume)")
    out, errors, grant_errors = [], [], []
    names: dict[str, str] = {}  # file id -> its name as shown
    with open_archive(cfg, exclusive=True) as v:
        abandon_planned(v)  # early uploads of an encode that was killed: to the trash
        todo = []
        if args.resume:
            todo += [("resume", f.file_id, None) for f in v.db.files_in(
                FileState.CLAIMED, FileState.ENCODED, FileState.COMMITTED)]
        todo += [("put", None, p) for p in paths]
        for kind, fid, path in todo:
            total = transfer_bytes(v.cfg, path.stat().st_size) if path else None
            with transfer_progress(shown(path.name) if path else fid[:12], total,
                                   not args.json) as adv:
                try:
                    if path:
                        fid = protect_file(v, path, progress=adv)
                    else:
                        resume(v, fid, adv)
                except DispersiondError as exc:
                    errors.append(str(exc))
                    continue
                except OSError as exc:  # this file only (unreadable, vanished): the rest go on
                    errors.append(f"{shown(path or fid)}: {exc.strerror or exc}; nothing of it "
                                  "was protected")
                    continue
            name = path.name if path else v.db.file(fid).name
            names[fid] = shown(name)
            out.append({"file_id": fid, **json_fields(name), "state": v.db.file(fid).state})
        v.empty_trash()  # best effort; what a store refuses now waits for the next run
        if out:  # as the daemon after its uploads: backup if due, grants, done
            handled = finish(v, [item["file_id"] for item in out], grant_errors=grant_errors)
            for item in out:
                item["state"] = v.db.file(item["file_id"]).state
                if v.cfg.grants and item["file_id"] in handled:
                    item["bundles"] = [str(p) for p in handled[item["file_id"]]["bundles"]]
    if args.json:
        emit_json({"files": out, "errors": errors, "grant_errors": grant_errors})
    else:
        for item in out:
            print(f"{item['file_id']}  {item['state']:9}  {names[item['file_id']]}")
    for msg in grant_errors:  # the files are protected; only the standing share failed
        print(f"dispersiond: warning: {msg}", file=sys.stderr)
    if errors:
        raise DispersiondError("\n".join(errors))
    return 0
