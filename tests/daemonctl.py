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
from dsp import ROOT, local_config

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
                 unprivileged: bool = False) -> None:
        self.cfg, self.log, self.env = cfg, log, env or {}
        self.unprivileged = unprivileged
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProc:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dispersiond", "-c", str(self.cfg), "--log-format", "json",
                 "run"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=drop_privileges_like_the_unit if self.unprivileged else None)  # noqa: PLW1509
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
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"level": "raw", "msg": line})
        return out

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


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
