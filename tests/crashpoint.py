"""A real `dispersiond` subprocess stopped at a named point, for a SIGKILL exactly there.

`Stopped(cfg, ["prune"], at="dispersiond.state.prune_rows:PruneMixin.move_members",
when="after", nth=2)` runs the CLI in a child process whose function `at` (module:name
or module:Class.method, looked up where the caller looks it up) is wrapped: on its
`nth` call, before or after the real one, the child writes a marker and sleeps. `wait()`
returns once it is there; `kill()` sends SIGKILL, as a power cut or the OOM killer would.
Nothing in the package knows about it: the wrapping happens in the child's own start-up.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dsp import ROOT

RUNNER = r"""
import importlib, os, sys, threading, time
target, when, nth, marker = sys.argv[1:5]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)
calls, lock = [0], threading.Lock()

def stop():
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    while True:
        time.sleep(3600)

def wrapper(*args, **kwargs):
    with lock:
        calls[0] += 1
        hit = calls[0] == int(nth)
    if hit and when == "before":
        stop()
    out = real(*args, **kwargs)
    if hit and when == "after":
        stop()
    return out

setattr(owner, name, wrapper)
from dispersiond.cli import main
sys.exit(main(sys.argv[5:]))
"""


class Stopped:
    def __init__(self, cfg: Path, args: list[str], *, at: str, when: str = "before",
                 nth: int = 1) -> None:
        self.marker = cfg.parent / f"stopped-{os.getpid()}-{time.monotonic_ns()}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, at, when, str(nth), str(self.marker),
             "-c", str(cfg), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env)

    def wait(self, timeout: float = 60.0) -> "Stopped":
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise AssertionError(f"the child exited ({self.proc.returncode}) before it "
                                     f"reached the point:\n{out}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("the child never reached the point")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL
        if self.proc.stdout:
            self.proc.stdout.close()
