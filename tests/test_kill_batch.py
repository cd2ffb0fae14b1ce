"""SIGKILL inside a batch encode, at each of its steps: while a file is being staged, in
the middle of the durability barrier, between the barrier and the transaction, inside
the transaction, and right after it. The daemon started next must take every file to
done: none lost, none duplicated, each restoring bit-exact, nothing left behind on the
device or in a store that the manifest does not name.

The batch runs in a child process (the real claim, the real encode_many) that kills
itself at the chosen instant; the daemon is the real `dispersiond run`.
"""
from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from daemonctl import DaemonProc, check_archive, daemon_config, drop, log_events, status, wait_until
from dsp import ROOT

CHILD = textwrap.dedent('''
    import itertools, os, signal, sys
    from pathlib import Path
    from dispersiond import codec, fsutil, inbox as ib
    from dispersiond.archive import open_archive
    from dispersiond.config import load_config
    from dispersiond.ops import protect

    cfg, point = load_config(sys.argv[1]), sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def after(n, real, before=False):
        """`real`, but the process dies at its n-th call (before or after it runs). The
        barrier's fsyncs run on several threads: each call takes its number atomically."""
        calls = itertools.count(1)
        def wrapped(*args, **kwargs):
            k = next(calls)
            if before and k == n:
                die()
            out = real(*args, **kwargs)
            if k == n:
                die()
            return out
        return wrapped

    if point == "staging":  # the 4th file's container is written, not yet renamed in
        codec.write = after(4, codec.write)
    elif point == "barrier":  # some staged files synced, others not
        fsutil.fsync_path = after(5, fsutil.fsync_path)
    elif point == "before-commit":  # everything durable, nothing recorded
        protect.sync_batch = after(1, protect.sync_batch)
    elif point == "in-commit":  # the transaction open, the batch's rows written into it
        protect._record_encoded_many = after(1, protect._record_encoded_many)
    elif point == "after-commit":  # recorded, not yet logged or reported
        protect._log_encoded_many = after(1, protect._log_encoded_many, before=True)
    with open_archive(cfg, exclusive=True) as v:
        inbox = Path(cfg.inbox)
        items = [(p, p.stat()) for p in sorted(inbox.iterdir()) if not p.name.startswith(".")]
        claimed, failed = ib.claim(v, items)
        assert not failed, failed
        protect.encode_many(v, [fid for fid, _ in claimed])
    sys.exit(3)  # not reached: the process is killed inside the batch
''')

POINTS = ["staging", "barrier", "before-commit", "in-commit", "after-commit"]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_inside_a_batch_encode_loses_and_duplicates_nothing(tmp_path: Path,
                                                                    point: str) -> None:
    rng = random.Random(point)
    moved = tmp_path / "protected"
    # 40,000-byte records are staged (their shards pass the threshold), the others held:
    # a batch with containers in the database and in prf/, and fsyncs at its barrier
    cfg = daemon_config(tmp_path, after="move", after_move_to=str(moved), stable_seconds=0.1,
                        schedule={"manifest_backup": "1s"}, pack={"threshold": "16KiB"})
    inbox = tmp_path / "inbox"
    originals = {f"rec-{i:02d}.hl7": rng.randbytes(rng.choice([0, 1, 700, 5000, 40_000]))
                 for i in range(12)}
    for name, data in originals.items():
        drop(inbox, name, data)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    r = subprocess.run([sys.executable, str(script), str(cfg), point], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == -9, r.stderr  # killed where it was meant to be

    from dispersiond.archive import open_archive
    from dispersiond.config import load_config

    c = load_config(cfg)
    with open_archive(c) as v:  # what the kill left: all claimed, or all encoded
        states = collections.Counter(f.state.value for f in v.db.files())
        assert states == {"encoded" if point == "after-commit" else "claimed": 12}, states
        assert not v.db.objects() if point != "after-commit" else v.db.objects()
    assert not any(p for p in inbox.iterdir() if not p.name.startswith("."))

    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: (s := status(cfg))["files"].get("done") == 12 and s["running"], 60,
                   "every file done", d, every=0.2)
        code, _ = d.terminate()
    finally:
        d.kill()
    assert code == 0
    if point == "after-commit":  # the held ones were recorded with their public fragments
        reconciled = log_events(tmp_path / "daemon.log", "reconciled interrupted steps")
        held = sum(len(data) < 40_000 for data in originals.values())  # in memory, which
        assert 0 < held < 12 and reconciled[-1]["encoded_again"] == held  # died: again
    check_archive(cfg, originals, tmp_path / "out", moved)  # each done once, nothing left

