"""Driving `dispersiond run` as a real subprocess from tests: start, stop, kill, wait, check."""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from dsp import ROOT, kept_containers, local_config

FAST_SCHEDULE = {"rescan": "1s", "manifest_backup": "2s", "verify": "1h",
                 "retry_base": "0.3s", "retry_max": "2s"}


def daemon_config(tmp: Path, mode: str = "erasure", **extra: Any) -> Path:
    """Local stores (3 clouds + a vault), an inbox, quick schedules: overridable."""
    extra.setdefault("inbox", str(tmp / "inbox"))
    extra.setdefault("stable_seconds", 0.3)
    extra["schedule"] = {**FAST_SCHEDULE, **extra.get("schedule", {})}
    (tmp / "inbox").mkdir(exist_ok=True)
    return local_config(tmp, mode, **extra)


def edit_config(cfg: Path, **changes: Any) -> None:
    raw = yaml.safe_load(cfg.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    cfg.write_text(yaml.safe_dump(raw))


def drop_privileges_like_the_unit() -> None:
    """preexec_fn: an empty capability bounding set, as CapabilityBoundingSet= does; for
    root this means file permissions apply again (so mode 000 really is unreadable)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP = 24
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows


class DaemonProc:
    """`dispersiond -c CFG --log-format json run` with its log in a file."""

    def __init__(self, cfg: Path, log: Path, env: dict[str, str] | None = None,
                 unprivileged: bool = False, preexec: Callable[[], None] | None = None) -> None:
        """`preexec`: run in the child before exec (a umask, rlimits); `unprivileged`
        drops the capability bounding set as the unit does."""
        self.cfg, self.log, self.env = cfg, log, env or {}
        self.preexec = drop_privileges_like_the_unit if unprivileged else preexec
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProc:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dispersiond", "-c", str(self.cfg), "--log-format", "json",
                 "run"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=self.preexec)  # noqa: PLW1509
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def lines(self) -> list[dict]:
        return log_lines(self.log)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def log_lines(log: Path) -> list[dict]:
    """A JSON log, one dict a line (a line that is not JSON, e.g. a traceback, as raw)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"level": "raw", "msg": line})
    return out


def status(cfg: Path) -> dict:
    from dispersiond.commands.status import collect
    from dispersiond.config import load_config

    c = load_config(cfg)
    return collect(c.state_path, [s.name for s in c.stores])


def wait_until(pred: Callable[[], Any], timeout: float, what: str,
               daemon: DaemonProc | None = None, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if daemon is not None and daemon.proc is not None and not daemon.alive:
            raise AssertionError(f"daemon exited ({daemon.proc.returncode}) while waiting for "
                                 f"{what}\n{daemon.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                                 + (daemon.tail() if daemon else ""))
        time.sleep(every)


def drop(inbox: Path, name: str, data: bytes) -> None:
    """Write as a hidden partial file, then rename: the way producers should."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, inbox / name)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def done_count(cfg: Path) -> int:
    return status(cfg)["files"].get("done", 0)


def state_rows(cfg: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows from a running daemon's state database, read-only (it is not disturbed); none
    while the database is not there yet or its tables are being made."""
    import sqlite3

    from dispersiond.config import load_config

    db = load_config(cfg).state_path / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def log_events(log: Path, msg: str) -> list[dict]:
    """The JSON log lines whose message is `msg`."""
    return [e for e in log_lines(log) if e.get("msg") == msg]


def store_dirs(cfg: Path) -> dict[str, Path]:
    """Each local store's directory, by store name."""
    raw = yaml.safe_load(cfg.read_text())
    return {s["name"]: Path(s["path"]) for s in raw["stores"] if s["type"] == "local"}


def partial_writes(cfg: Path) -> set[Path]:
    """Temporary files a local store writes an object into before linking it (a put cut
    short by a kill leaves one; `list` never shows it)."""
    return {p for d in store_dirs(cfg).values() for p in d.rglob(".tmp-*")}


def check_archive(cfg: Path, originals: dict[str, bytes], out: Path,
                  moved: Path | None = None) -> dict[str, int]:
    """After the daemon stopped: every record done exactly once (one file row per name, one
    object row per fragment and store, each restoring bit-exact), the after-policy run
    once, nothing left in the trash, in `planned` or staged, every pack row backed by its
    members, and every store holding exactly the names the state or a recorded manifest
    backup references. Returns a few counts for the caller's report."""
    import collections

    from dispersiond.archive import open_archive
    from dispersiond.config import load_config
    from dispersiond.ops.backup import _backups
    from dispersiond.ops.restore import restore
    from backends import open_store

    c = load_config(cfg)
    with open_archive(c) as v:
        assert v.db.counts() == {"done": len(originals)}, v.db.counts()
        assert v.db.integrity_check() == "ok"
        rows = v.db.files()
        names = collections.Counter(f.name for f in rows)
        assert names == collections.Counter(originals.keys()), ("duplicated or missing files", names)
        out.mkdir(exist_ok=True)
        for f in rows:
            restore(v, f.file_id, out / f.name)
            assert sha((out / f.name).read_bytes()) == sha(originals[f.name]), f.name
        if moved is not None:  # the after-policy ran exactly once per file
            assert {p.name: p.read_bytes() for p in moved.iterdir()} == originals
        inbox = Path(c.inbox) if c.inbox else None
        assert inbox is None or not any(inbox.iterdir())
        for sub in ("claimed", "work"):
            assert not any((c.state_path / sub).iterdir()), sub
        assert sorted(kept_containers(c.state_path)) == sorted(f.file_id for f in rows)
        assert not v.db.query("SELECT * FROM trash")
        assert not v.db.query("SELECT * FROM planned")
        # One row per fragment and store; every file has all of them.
        objs = v.db.objects()
        assert all(o.state == "uploaded" for o in objs)
        places = collections.Counter((o.file_id, o.role, o.shard, o.store) for o in objs)
        assert set(places.values()) == {1}, "a fragment recorded twice"
        per_file = collections.Counter((o.file_id, o.role) for o in objs)
        for f in rows:
            assert per_file[f.file_id, "public"] == len(c.public.stores), f.name
            assert per_file[f.file_id, "private"] == len(c.private.stores), f.name
        # Pack rows and their members agree; no pack without a member.
        packs = {(p.store, p.name): p for p in v.db.packs()}
        members = collections.defaultdict(list)
        for o in objs:
            if o.packed:
                members[o.store, o.name].append(o)
        assert set(members) == set(packs), "a pack row without members, or members without one"
        for key, p in packs.items():
            assert p.state == "uploaded" and p.members == len(members[key]), key
            assert {(o.pack_digest, o.object_size) for o in members[key]} == {(p.digest, p.size)}
        # Every stored name is referenced: by an object row or a recorded manifest backup.
        referenced = collections.defaultdict(set)
        for o in objs:
            referenced[o.store].add(o.name)
        raw = yaml.safe_load(cfg.read_text())
        for s in raw["stores"]:
            with open_store(s["type"], s["name"], path=s["path"]) as store:
                listed = set(store.list(""))
            expected = referenced[s["name"]]
            if s["name"] in c.private.stores:
                expected = expected | {n for _, n in _backups(v, s["name"])}
            assert listed == expected, (s["name"], len(listed - expected), len(expected - listed))
        return {"files": len(rows), "objects": len(objs), "packs": len(packs),
                "packed": sum(len(m) for m in members.values())}
