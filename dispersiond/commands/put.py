"""`dispersiond put FILE... | DIR`: protect and disperse now, in batches."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..archive import open_archive
from ..display import json_fields, shown
from ..errors import DispersiondError
from ..ops.held_recovery import encode_lost_again
from ..ops.protect import abandon_planned, admit_many, transfer_bytes
from ..ops.protect_batch import BATCH_FILES, PUT_HOLD_BYTES, protect_batch, put_batches
from ..ops.upload import Throttle
from ..state import FileState
from ._common import add_config, add_json, config, emit_json, transfer_progress


def register(sub) -> None:
    p = sub.add_parser("put", help="protect files (or every file in a folder) now and print "
                                   "their ids",
                       description="Selectively encrypt each FILE (for a DIR: every regular "
                                   "file under it, in name order, symlinks not followed), "
                                   "upload the public fragments to the public stores and the "
                                   "private containers to the private stores, and record them "
                                   "in the manifest. Files are handled in batches, as the "
                                   "daemon does: small ones share pack objects. The files "
                                   "themselves are left where they are.")
    add_config(p)
    p.add_argument("files", nargs="*", metavar="FILE|DIR")
    p.add_argument("--resume", action="store_true",
                   help="finish files whose encode or uploads failed earlier")
    add_json(p)
    p.set_defaults(func=_run)


def sources(args: list[str], errors: list[str], skip: Path | None = None) -> list[Path]:
    """The files to protect: each FILE as given, each DIR walked (never into `skip`, the
    state directory). What is neither is an error of its own; the others go on."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += walk(p, errors, skip)
        elif p.is_file():
            out.append(p)
        else:
            errors.append(f"{shown(p)}: not a readable file or folder; nothing of it was "
                          "protected")
    return out


def walk(root: Path, errors: list[str], skip: Path | None = None) -> list[Path]:
    """Regular files under `root`, sorted by name at each level (a folder's files and
    subfolders in one order); symlinks, FIFOs, sockets and devices are skipped, and so is
    the folder `skip`. A folder that cannot be listed is an error; the walk goes on."""
    if skip is not None and os.path.exists(skip) and os.path.samefile(root, skip):
        return []
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
    except OSError as exc:
        errors.append(f"{shown(root)}: cannot list the folder ({exc.strerror or exc}); "
                      "nothing in it was protected")
        return []
    out: list[Path] = []
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                out += walk(Path(e.path), errors, skip)
            elif e.is_file(follow_symlinks=False):
                out.append(Path(e.path))
        except OSError as exc:  # vanished while listed
            errors.append(f"{shown(e.path)}: {exc.strerror or exc}; nothing of it was "
                          "protected")
    return out


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    if not args.files and not args.resume:
        raise DispersiondError("name at least one FILE or DIR (or --resume)")
    errors: list[str] = []
    grant_errors: list[str] = []
    paths = sources(args.files, errors, cfg.state_path)
    out: list[dict] = []  # per protected file: --json
    lines: list[str] = []  # ... and as text
    with open_archive(cfg, exclusive=True) as v:
        abandon_planned(v)  # early uploads of an encode that was killed: to the trash
        encode_lost_again(v)  # small files whose held fragments died with a put
        v.held.limit = PUT_HOLD_BYTES  # a batch is encoded whole before it is sent
        todo = [f.file_id for f in v.db.files_in(
            FileState.CLAIMED, FileState.ENCODED, FileState.COMMITTED)] if args.resume else []
        # Every file is admitted before any is encoded (one transaction per batch), so a
        # put that dies anywhere leaves each of them for `put --resume`.
        for start in range(0, len(paths), BATCH_FILES):
            part = paths[start:start + BATCH_FILES]
            ids = admit_many(v, [(Path(os.path.abspath(p)), p.name) for p in part])
            for p, fid in zip(part, ids):
                if isinstance(fid, OSError):
                    errors.append(f"{shown(p)}: {fid.strerror or fid}; nothing of it was "
                                  "protected")
                else:
                    todo.append(fid)
        rows = v.db.files_by_id(todo)
        total = sum(transfer_bytes(v.cfg, f.size) for f in rows.values())
        label = shown(rows[todo[0]].name) if len(todo) == 1 else f"{len(todo)} files"
        throttle = Throttle(v.cfg.schedule.bandwidth())
        with transfer_progress(label, total, not args.json) as adv:
            for batch in put_batches((fid, rows[fid].size) for fid in todo):
                res = protect_batch(v, {fid: rows[fid] for fid in batch}, throttle, adv,
                                    grant_errors)
                for fid in batch:
                    name, state = rows[fid].name, res.states[fid]
                    if fid in res.errors:
                        errors.append(f"{shown(name)}: {res.errors[fid]}")
                        continue
                    item = {"file_id": fid, **json_fields(name), "state": state}
                    if v.cfg.grants and fid in res.handled:
                        item["bundles"] = [str(p) for p in res.handled[fid]["bundles"]]
                    out.append(item)
                    lines.append(f"{fid}  {state:9}  {shown(name)}")
        v.empty_trash()  # best effort; what a store refuses now waits for the next run
    if args.json:
        emit_json({"files": out, "errors": errors, "grant_errors": grant_errors})
    else:
        for line in lines:
            print(line)
    for msg in grant_errors:  # the files are protected; only the standing share failed
        print(f"dispersiond: warning: {msg}", file=sys.stderr)
    if errors:
        raise DispersiondError("\n".join(errors))
    return 0
