"""The crash test: files keep arriving while the daemon is SIGKILLed at random instants
and restarted each time. At the end every file restores bit-exact, none is duplicated,
none is missing, no store holds an object the manifest does not name, and the state
database passes its integrity check.

Sizes: DISPERSIOND_KILLTEST="FILES,KILLS" (default 200,100); the seed is printed and can
be fixed with DISPERSIOND_KILLTEST_SEED.
"""
from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import yaml
from daemonctl import DaemonProc, daemon_config, drop, sha, status, wait_until

from backends import open_store
from dispersiond.ops.encode import EARLY_UPLOAD_MIN


def sizes() -> tuple[int, int]:
    files, kills = os.environ.get("DISPERSIOND_KILLTEST", "200,100").split(",")
    return int(files), int(kills)


def test_sigkill_at_random_instants_loses_and_duplicates_nothing(tmp_path):
    n_files, n_kills = sizes()
    seed = int(os.environ.get("DISPERSIOND_KILLTEST_SEED", random.randrange(1 << 30)))
    print(f"kill test: {n_files} files, {n_kills} kills, seed {seed}")
    rng = random.Random(seed)
    moved = tmp_path / "protected"
    cfg = daemon_config(tmp_path, after="move", after_move_to=str(moved), stable_seconds=0.1,
                        upload_workers=4, schedule={"manifest_backup": "1s"})
    inbox = tmp_path / "inbox"
    originals: dict[str, bytes] = {}
    for i in range(n_files):  # mostly small records, some images, a few edge sizes, and a
        r = rng.random()      # few large enough to upload while they are encoded
        size = (rng.choice([0, 1, 100, 4096]) if i % 50 == 7 else
                rng.randrange(EARLY_UPLOAD_MIN, EARLY_UPLOAD_MIN + (8 << 20)) if i % 50 == 21 else
                rng.randrange(1, 64 << 10) if r < 0.7 else
                rng.randrange(64 << 10, 1 << 20) if r < 0.95 else
                rng.randrange(1 << 20, 4 << 20))
        originals[f"rec-{i:03d}.dcm"] = rng.randbytes(size)
    pending = list(originals)
    log = tmp_path / "daemon.log"
    t0 = time.monotonic()
    kills_by_phase: collections.Counter[str] = collections.Counter()
    for k in range(n_kills):
        # Files keep arriving, in lumps, over the first ~70% of the run.
        batch = rng.randrange(0, 2 * n_files // max(1, int(n_kills * 0.7)) + 2)
        if k >= n_kills * 0.7:
            batch = len(pending)
        early = rng.random() < 0.3
        if early:
            for name in pending[:batch]:
                drop(inbox, name, originals[name])
        d = DaemonProc(cfg, log).start()
        if early:  # somewhere in start-up: imports, reconcile, resuming old work
            time.sleep(rng.uniform(0.0, 0.8))
        else:  # while the running daemon works on a fresh lump
            wait_until(lambda: status(cfg)["running"], 20, "start-up", d, every=0.01)
            for name in pending[:batch]:
                drop(inbox, name, originals[name])
            if batch:  # aim into the work on it: claim, encode, upload, backup, after-policy
                deadline = time.monotonic() + 1.0
                while _phase(cfg) == "idle" and time.monotonic() < deadline:
                    time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
        del pending[:batch]
        assert d.alive, f"daemon died on its own before kill {k}:\n{d.tail()}"
        kills_by_phase[_phase(cfg)] += 1
        d.kill()
    for name in pending:
        drop(inbox, name, originals[name])
    d = DaemonProc(cfg, log).start()
    try:
        wait_until(lambda: (s := status(cfg))["files"]["done"] == n_files and s["running"], 180,
                   "every file done", d, every=0.25)
        code, took = d.terminate()
    finally:
        d.kill()
    elapsed = time.monotonic() - t0
    print(f"kill test: {n_kills} kills in {elapsed:.0f} s; state at each kill: "
          f"{dict(kills_by_phase)}")
    assert code == 0 and took < 10

    from dispersiond.config import load_config
    from dispersiond.ops.backup import _backups
    from dispersiond.ops.restore import restore
    from dispersiond.archive import open_archive

    c = load_config(cfg)
    with open_archive(c) as v:
        st = v.db.counts()
        assert st == {"done": n_files}, st
        assert v.db.integrity_check() == "ok"
        rows = v.db.files()
        names = collections.Counter(f.name for f in rows)
        assert names == collections.Counter(originals.keys()), "duplicated or missing files"
        # Every file restores bit-exact.
        out = tmp_path / "out"
        out.mkdir()
        for f in rows:
            restore(v, f.file_id, out / f.name)
            assert sha((out / f.name).read_bytes()) == sha(originals[f.name]), f.name
        # The after-policy ran exactly once per file.
        assert {p.name: p.read_bytes() for p in moved.iterdir()} == originals
        assert not any(inbox.iterdir())
        for sub in ("claimed", "work"):
            assert not any((c.state_path / sub).iterdir()), sub
        assert sorted(p.name for p in (c.state_path / "prf").iterdir()) == sorted(
            f"{f.file_id}.prf" for f in rows)
        # No store holds anything the manifest does not name; nothing waits in the trash.
        assert not v.db.query("SELECT * FROM trash")
        assert not v.db.query("SELECT * FROM planned")
        objects = collections.defaultdict(set)
        for o in v.db.objects():
            assert o.state == "uploaded"
            objects[o.store].add(o.name)
        raw = yaml.safe_load(cfg.read_text())
        for s in raw["stores"]:
            with open_store(s["type"], s["name"], path=s["path"]) as store:
                listed = set(store.list(""))
            expected = objects[s["name"]]
            if s["name"] in c.private.stores:
                expected = expected | {n for _, n in _backups(v, s["name"])}
            assert listed == expected, (s["name"], len(listed - expected), len(expected - listed))
        public = sum(1 for o in v.db.objects() if o.role == "public")
        assert public == n_files * len(c.public.stores)


def _phase(cfg: Path) -> str:
    """Where the pipeline was when the kill came (for the report only)."""
    try:
        st = status(cfg)
    except Exception:  # noqa: BLE001 - the database may be mid-creation on the first run
        return "starting"
    if not st["running"]:
        return "starting"
    files = st["files"]
    busy = [s for s in ("claiming", "claimed", "encoded", "committed") if files.get(s)]
    inbox = cfg.parent / "inbox"
    if any(not p.name.startswith(".") for p in inbox.iterdir()):
        busy.insert(0, "inbox")  # dropped, waiting to be seen stable and claimed
    return "+".join(busy) or "idle"
