"""`dispersiond ls`: protected files, their sizes, where they live and their health."""
from __future__ import annotations

import argparse
import datetime as dt

from ..display import json_fields, shown
from ..state import PROTECTED
from ..units import human_size
from ..archive import open_archive
from ._common import add_config, add_json, config, emit_json


def register(sub) -> None:
    p = sub.add_parser("ls", help="list protected files, where they live and their health")
    add_config(p)
    add_json(p)
    p.add_argument("--all", action="store_true", help="include files still in the pipeline")
    p.set_defaults(func=_run)


def health(objs, f) -> str:
    pub = [o for o in objs if o.role == "public"]
    prv = [o for o in objs if o.role == "private"]
    good_pub = sum(o.state == "uploaded" for o in pub)
    good_prv = sum(o.state == "uploaded" for o in prv)
    need = f.k if f.public_mode == "erasure" else 1
    if good_pub < need or not good_prv:
        return "at-risk" if f.state in PROTECTED else "pending"
    if good_pub < len(pub) or good_prv < len(prv):
        return "degraded"
    return "ok"


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    rows, names = [], []
    with open_archive(cfg) as v:
        for f in (v.db.files() if args.all else v.db.protected_files()):
            objs = v.db.objects(f.file_id)
            names.append(shown(f.name))
            rows.append({
                "file_id": f.file_id, **json_fields(f.name), "size": f.size, "state": f.state,
                "created": dt.datetime.fromtimestamp(f.created, dt.timezone.utc).isoformat(),
                "public": {"mode": f.public_mode, "k": f.k, "n": f.n,
                           "stores": sorted({o.store for o in objs if o.role == "public"})},
                "private": sorted({o.store for o in objs if o.role == "private"}),
                "health": health(objs, f),
            })
    if args.json:
        emit_json(rows)
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None)
    for col in ("id", "size", "state", "health", "public", "name"):
        t.add_column(col, justify="right" if col == "size" else "left",
                     no_wrap=col != "name", overflow="fold")
    for r, name in zip(rows, names):
        p = r["public"]
        where = (f"{p['k']}-of-{p['n']}" if p["mode"] == "erasure"
                 else f"x{len(p['stores'])}" if p["mode"] else "-")
        t.add_row(r["file_id"][:12], human_size(r["size"]), r["state"], r["health"], where,
                  Text(name))
    Console().print(t)
    stores = sorted({s for r in rows for s in r["public"]["stores"]})
    if stores:
        print(f"public stores: {', '.join(stores)}; private: "
              f"{', '.join(sorted({s for r in rows for s in r['private']}))} "
              "(--json for each file's)")
    if not rows:
        print("no protected files yet ('dispersiond put FILE' or drop files into the inbox)")
    return 0
