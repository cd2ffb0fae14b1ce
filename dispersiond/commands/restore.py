"""`dispersiond restore ID|NAME` and `restore --all`: rebuild files bit-exact after
checking every byte."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator

from ..display import as_text, json_fields, shown
from ..errors import DispersiondError
from ..ops.restore import (BulkItem, BulkReport, matching, restore, restore_many,
                           since_timestamp, target_path)
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json, transfer_progress

MAX_JOBS = 64


def register(sub) -> None:
    p = sub.add_parser("restore", help="rebuild protected files (bit-exact, verified)",
                       description="Fetch the public fragment (any intact replica, or any k "
                                   "shards) and the private container, check every digest, "
                                   "decode, check the original's digest, and only then move "
                                   "the file into place. With --all, every protected file "
                                   "that matches --name and --since, several at a time.")
    add_config(p)
    p.add_argument("ref", metavar="ID|NAME", nargs="?",
                   help="file id (or its first 6+ digits) or name")
    p.add_argument("--to", default=".", metavar="PATH",
                   help="output file, or folder to restore into (default: here)")
    p.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    p.add_argument("--all", action="store_true",
                   help="restore every protected file (filtered by --name, --since) into "
                        "the folder --to, each under its own name")
    p.add_argument("--name", metavar="GLOB", help="with --all: only names matching this "
                   "shell pattern (e.g. '*.dcm'; quote it)")
    p.add_argument("--since", metavar="DATE|AGE", help="with --all: only files protected "
                   "since an ISO date (2026-11-30) or for less than an age (7d, 12h)")
    p.add_argument("--jobs", type=int, default=4, metavar="N",
                   help="with --all: files restored at a time (default 4)")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.all:
        return _run_all(args)
    if args.ref is None:
        raise DispersiondError("restore needs a file (ID or NAME), or --all for every file")
    if args.name is not None or args.since is not None:
        raise DispersiondError("--name and --since select files for --all; add --all, or "
                               "give one file's ID or NAME alone")
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


def _run_all(args: argparse.Namespace) -> int:
    if args.ref is not None:
        raise DispersiondError(f"give either {args.ref!r} or --all, not both")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise DispersiondError(f"--jobs {args.jobs}: give a number from 1 to {MAX_JOBS}")
    dest = Path(args.to)
    if not dest.is_dir():
        raise DispersiondError(f"--to {shown(dest)} is not a folder; create it or give an "
                               "existing folder to restore into")
    since = None if args.since is None else since_timestamp(args.since)
    cfg = config(args)
    with open_archive(cfg) as v:
        files = matching(v.db.protected_since(since), args.name)
        with _bulk_progress(files, not args.json) as done:
            report = restore_many(v, files, dest, jobs=args.jobs, force=args.force, done=done)
    for item in report.failed:  # on stderr with --json too: stdout stays one object
        print(f"dispersiond: failed: {item.file.file_id} {shown(item.file.name)}: "
              f"{shown(item.error)}", file=sys.stderr)
    if args.json:
        emit_json(_as_json(report))
    else:
        print(_summary(report, len(files)))
    return 1 if report.failed else 0


def _summary(r: BulkReport, matched: int) -> str:
    if not matched:
        return "no protected file matches (see 'dispersiond ls'); nothing restored"
    skipped = (f", {len(r.skipped)} skipped (already there; --force replaces them)"
               if r.skipped else ", 0 skipped")
    return (f"restored {len(r.restored)} of {matched} files, {len(r.failed)} failed{skipped}; "
            f"{r.bytes} bytes verified in {r.seconds:.1f} s")


def _as_json(r: BulkReport) -> dict:
    return {"restored": len(r.restored), "failed": len(r.failed), "skipped": len(r.skipped),
            "bytes": r.bytes, "seconds": round(r.seconds, 3),
            "files": [{"file_id": i.file.file_id, **json_fields(i.file.name or ""),
                       "path": None if i.path is None else as_text(str(i.path)),
                       "size": i.file.size, "ok": i.ok, "skipped": i.skipped,
                       "error": i.error} for i in r.items]}


@contextlib.contextmanager
def _bulk_progress(files: list, enabled: bool) -> Iterator[Callable[[BulkItem], None]]:
    """One bar over the bytes of all files (a file counts when it ends, verified or not)."""
    total = sum(f.size for f in files)
    with transfer_progress(f"restoring {len(files)} files", total, enabled) as adv:
        yield lambda item: adv(item.file.size)
