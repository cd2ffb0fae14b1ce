"""Temporary files and folders in the state directory's work area, named after the process
that made them, so that what a killed process left can be told from what a running one
still uses (the CLI's verify and restore run beside the daemon, without its lock).

A name is `.<what>-<pid>-<random>`. `sweep` removes those whose process is gone; a
restore's half-written output may hold plaintext, and a deep verify's download is as large
as a pack: neither may stay on an edge device's disk after a SIGKILL.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_NAME = re.compile(r"^\.[a-z][a-z-]*?-(\d+)-")


def _prefix(what: str) -> str:
    return f".{what}-{os.getpid()}-"


@contextlib.contextmanager
def folder(work: Path, what: str) -> Iterator[Path]:
    """A private temporary folder in `work`, removed on leaving."""
    with tempfile.TemporaryDirectory(prefix=_prefix(what), dir=work) as tmp:
        yield Path(tmp)


def new_folder(work: Path, what: str) -> Path:
    """A private temporary folder in `work`: the caller removes it."""
    return Path(tempfile.mkdtemp(prefix=_prefix(what), dir=work))


def file(work: Path, what: str) -> tuple[int, Path]:
    """A private temporary file in `work` (fd, path): the caller removes it."""
    fd, path = tempfile.mkstemp(prefix=_prefix(what), dir=work)
    return fd, Path(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, not ours to judge
    return True


def sweep(work: Path) -> int:
    """Remove the temporary entries of processes that no longer run; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(work))
    except FileNotFoundError:
        return 0
    for e in entries:
        m = _NAME.match(e.name)
        if not m or _alive(int(m.group(1))):
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
        removed += 1
    return removed
