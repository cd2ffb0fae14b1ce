"""The work area's temporary entries: a killed process's are swept at the next open, a
running one's (the CLI beside the daemon) never are."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dsp import ROOT, local_config

from dispersiond import scratch
from dispersiond.archive import open_archive
from dispersiond.config import load_config

# A child makes a scratch folder and a file holding "plaintext", then waits to be killed.
CHILD = """
import sys, time
from pathlib import Path
from dispersiond import scratch
work = Path(sys.argv[1])
fd, f = scratch.file(work, "pack")
with scratch.folder(work, "restore") as d:
    (d / "out").write_bytes(b"half a restored record")
    print(f.name, d.name, flush=True)
    time.sleep(600)
"""


def _child(work: Path) -> tuple[subprocess.Popen, list[str]]:
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(work)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    names = p.stdout.readline().split()
    assert len(names) == 2, names
    return p, names


def test_a_killed_process_leftovers_go_a_running_one_stays(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    killed, gone = _child(work)
    running, kept = _child(work)
    (work / "0123abcd").mkdir()  # a file's staging folder: not scratch, never touched
    (work / ".restore-legacy").mkdir()  # no pid in the name: left alone
    try:
        killed.kill()
        killed.wait(10)
        assert all((work / n).exists() for n in gone)  # SIGKILL: nothing cleaned it up
        assert scratch.sweep(work) == 2
        assert not any((work / n).exists() for n in gone)
        assert all((work / n).exists() for n in kept)
        assert (work / "0123abcd").is_dir() and (work / ".restore-legacy").is_dir()
        assert scratch.sweep(work) == 0
    finally:
        running.kill()
        running.wait(10)


def test_opening_the_archive_sweeps_and_operations_name_their_scratch(tmp_path):
    cfg = load_config(local_config(tmp_path))
    with open_archive(cfg) as v:
        work = v.root / "work"
        with scratch.folder(work, "restore") as d:
            assert d.name.startswith(f".restore-{os.getpid()}-")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = work / f".share-{dead}-x1y2z3"
    stale.mkdir()
    (stale / "container").write_bytes(b"\0" * 64)
    with open_archive(cfg):
        assert not stale.exists()
