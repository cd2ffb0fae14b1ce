"""`dispersiond status`: what the daemon is doing, without disturbing it."""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..display import shown
from ..errors import DispersiondError
from ..state import STATES, FileState, read_status
from ._common import add_config, add_json, config, emit_json

PENDING = (FileState.CLAIMING, FileState.CLAIMED, FileState.ENCODED, FileState.COMMITTED)


def register(sub) -> None:
    p = sub.add_parser("status", help="files per state, oldest pending, store errors, "
                                      "next scheduled runs",
                       description="Read-only: opens the state database without the lock, so "
                                   "it works while the daemon runs.")
    add_config(p)
    add_json(p)
    p.set_defaults(func=_run)


def daemon_running(state_dir: Path) -> bool:
    """The daemon holds an exclusive lock on state_dir/lock while it runs."""
    try:
        fd = os.open(state_dir / "lock", os.O_RDONLY)
    except PermissionError:
        raise DispersiondError(f"cannot read the state directory {state_dir}: run status as "
                               "the daemon's user (e.g. sudo -u dispersiond dispersiond -c "
                               "CONFIG status)") from None
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def collect(state_dir: Path, store_names: list[str]) -> dict[str, Any]:
    db_path = state_dir / "state.db"
    out: dict[str, Any] = {"running": daemon_running(state_dir)}
    empty = {"files": {s.value: 0 for s in STATES}, "oldest_pending": None,
             "stores": {s: {"last_ok": None, "last_error": None, "error_at": None,
                            "retry_at": None, "failing": False, "pending_objects": 0}
                        for s in store_names},
             "manifest": {"seq": 0, "dirty": False}, "daemon": None, "next_runs": None}
    if not db_path.exists():
        return {**out, **empty}
    rows = read_status(db_path, PENDING)
    if rows is None:
        return {**out, **empty}  # being created by a daemon starting right now
    out["files"] = {**{s.value: 0 for s in STATES}, **rows.counts}
    row = rows.oldest_pending
    out["oldest_pending"] = None if row is None else {
        "file_id": row["file_id"], "state": row["state"], "since": row["created"],
        "age_seconds": round(time.time() - row["created"], 1), "error": row["error"],
        "next_try": row["next_try"]}
    meta = rows.meta
    # The daemon rewrites this document when it changes and otherwise once a minute (its
    # heartbeat); whether a daemon runs is the lock's answer, never the document's age.
    daemon = json.loads(meta["daemon"]) if "daemon" in meta else None
    stores: dict[str, Any] = {s: {"last_ok": None, "last_error": None, "error_at": None}
                              for s in store_names}
    for r in rows.stores:
        stores[r["store"]] = {"last_ok": r["last_ok"], "last_error": r["last_error"],
                              "error_at": r["error_at"]}
    for name, s in stores.items():
        live = ((daemon or {}).get("stores") or {}).get(name) or {}
        s["retry_at"] = live.get("retry_at") if out["running"] else None
        # Failing: the last thing heard from it was an error (or the daemon says so).
        s["failing"] = (bool(live.get("failures")) and out["running"]) or (
            (s["error_at"] or 0) > (s["last_ok"] or 0))
    for name, s in stores.items():
        s["pending_objects"] = rows.pending_objects.get(name, 0)
    out["stores"] = stores
    out["manifest"] = {"seq": int(meta.get("manifest_seq", 0) or 0),
                       "dirty": meta.get("manifest_dirty", "1") == "1"}
    out["daemon"] = daemon
    out["next_runs"] = (daemon or {}).get("next_runs") if out["running"] else None
    return out


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    d = dt.datetime.fromtimestamp(ts).astimezone()
    delta = ts - time.time()
    rel = f"in {_dur(delta)}" if delta >= 0 else f"{_dur(-delta)} ago"
    return f"{d:%Y-%m-%d %H:%M:%S} ({rel})"


def _dur(s: float) -> str:
    s = int(s)
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


def _run(args: argparse.Namespace) -> int:
    cfg = config(args)
    try:
        st = collect(cfg.state_path, [s.name for s in cfg.stores])
    except sqlite3.Error as exc:
        raise DispersiondError(f"cannot read the state database in {cfg.state_path}: {exc} "
                               "(run status as the daemon's user)") from None
    if args.json:
        emit_json(st)
        return 0
    d = st.get("daemon") or {}
    if st["running"]:
        print(f"daemon: running (pid {d.get('pid', '?')}, since {_when(d.get('started'))})")
        if d.get("intake") == "paused":
            print(f"  intake PAUSED: {shown(str(d.get('paused_reason')))}")
        if d.get("uploads") == "held":
            print(f"  uploads held until the window opens "
                  f"({d.get('upload_window')}): {_when(d['next_runs'].get('upload_window_opens'))}")
    else:
        print("daemon: not running")
    files = st["files"]
    print("files: " + ", ".join(f"{k} {v}" for k, v in files.items()
                                if v or k == FileState.DONE))
    op = st.get("oldest_pending")
    if op:
        line = f"oldest pending: {op['file_id']} ({op['state']}, since {_when(op['since'])})"
        if op.get("error"):
            line += f", last error: {shown(op['error'])}"
        print(line)
    for name, s in (st.get("stores") or {}).items():
        state = "FAILING" if s["failing"] else "ok"
        line = f"store {name}: {state}, last ok {_when(s['last_ok'])}"
        if s["pending_objects"]:
            line += f", {s['pending_objects']} objects waiting"
        if s.get("last_error"):
            line += f"; last error {_when(s['error_at'])}: {shown(s['last_error'])}"
        if s.get("retry_at"):
            line += f"; next try {_when(s['retry_at'])}"
        print(line)
    for job, ts in (st.get("next_runs") or {}).items():
        print(f"next {job.replace('_', ' ')}: {_when(ts)}")
    return 0
