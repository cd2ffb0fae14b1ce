"""`dispersiond prune [--dry-run]`: give back the space dead members take in packs, and
sweep packs nobody references."""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator

from ..archive import open_archive
from ..ops.prune import PruneReport, progress_total, prune
from ..units import human_size
from ._common import add_config, add_json, config, emit_json

#: Sweep verdicts a person should look at (exit 1).
_ATTENTION = ("keep", "unread", "unlisted")


def register(sub) -> None:
    p = sub.add_parser(
        "prune", help="rewrite packs that are mostly dead bytes, delete empty and "
                      "unreferenced packs",
        description="Small files' fragments live in packs, many per stored object. A file "
                    "that is forgotten or re-keyed leaves its public members behind in its "
                    "packs as dead bytes (noise without its private container). prune "
                    "rewrites each pack whose dead share has reached pack.prune_dead_fraction "
                    "(default 0.3) with only its live members, under a new name, and deletes "
                    "the old pack once a manifest backup names the new places; a pack with no "
                    "live member is deleted. Then it sweeps every store: a pack the state does "
                    "not know (an upload a crash cut off) is deleted pack.sweep_grace (default "
                    "24h) after prune first saw it, and only if it opens under this master key "
                    "and no file needs it; anything else it does not know is listed and left "
                    "alone. The daemon runs the same on schedule.prune (default daily).",
        epilog="Exit status 0: done; 1: a pack could not be rewritten, or the sweep found "
               "something to look at (named in the output); 2: an error (message on stderr).")
    add_config(p)
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be rewritten, deleted and swept, change nothing "
                        "(works while the daemon runs)")
    add_json(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    with open_archive(cfg, exclusive=not args.dry_run) as v:
        with _bar(not args.json and not args.dry_run) as (advance, set_total):
            rep = prune(v, dry_run=args.dry_run, progress=advance,
                        on_plan=lambda d: set_total(progress_total(d)))
    if args.json:
        emit_json(rep.as_dict())
    else:
        _summary(rep)
    attention = any(s["action"] in _ATTENTION for s in rep.swept)
    return 1 if rep.failed or attention else 0


@contextlib.contextmanager
def _bar(enabled: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar on stderr (a terminal only) over the bytes a repack moves, its total
    known once the packs are planned."""
    if not enabled or not sys.stderr.isatty():
        yield (lambda n: None), (lambda n: None)
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as prog:
        task = prog.add_task("pruning", total=None)
        yield (lambda n: prog.advance(task, n)), (lambda n: prog.update(task, total=n or None))


def _summary(rep: PruneReport) -> None:
    would = "would be " if rep.dry_run else ""
    print(f"{len(rep.decisions)} packs: {rep.count('keep')} kept, {rep.count('repack')} "
          f"{would}rewritten, {rep.count('delete')} without a live member {would}deleted"
          + (f", {rep.count('skip')} skipped" if rep.count("skip") else "")
          + ("" if rep.dry_run else f"; {len(rep.deleted)} old packs deleted, "
             f"{human_size(max(0, rep.freed_bytes))} given back"))
    for d in rep.decisions:
        if d.action == "repack":
            print(f"  {d.pack.store}: pack {d.pack.name} is {d.dead_fraction:.0%} dead: "
                  f"{d.live} live members {would}copied into a new pack")
        elif d.action == "skip":
            print(f"  {d.pack.store}: pack {d.pack.name} skipped: {d.reason}")
    for n in rep.new_packs:
        print(f"  {n['store']}: new pack {n['pack']} holds {n['members']} members")
    for d in rep.deleted:
        print(f"  {d['store']}: pack {d['pack']} deleted")
    for w in rep.waiting:
        print(f"  {w['store']}: pack {w['pack']} not deleted yet ({w['why']}); retried later")
    for f in rep.failed:
        print(f"  {f['store']}: could not rewrite pack(s) {', '.join(f['packs'])}: {f['error']}")
    swept = [s for s in rep.swept if s["action"] == "delete"]
    waiting = [s for s in rep.swept if s["action"] == "waiting"]
    other = [s for s in rep.swept if s["action"] not in ("delete", "waiting")]
    print(f"sweep: {len(swept)} unreferenced packs {would}deleted, {len(waiting)} waiting out "
          f"sweep_grace, {len(other)} other objects left alone")
    for s in swept + other:
        what = f"object {s['name']}" if s["name"] else "listing"
        verdict = "deleted" if s["action"] == "delete" else s.get("reason", s["action"])
        print(f"  {s['store']}: {what}: {would if s['action'] == 'delete' else ''}{verdict}")
    if rep.interrupted:
        print("interrupted: run prune again to finish")
