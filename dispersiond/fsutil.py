"""Crash-safe file writing: a reader sees the old file or the whole new one, never half."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = True,
                  mode: int = 0o600) -> Iterator[BinaryIO]:
    """Write `path` via a temporary file in the same folder, fsync, then rename.

    On any exception the temporary file is removed and `path` is untouched.
    With overwrite=False an existing `path` is never replaced (FileExistsError).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile
            os.unlink(tmp)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_key_file(path: str | os.PathLike, length: int, what: str = "key") -> bytes:
    """A raw key file of exactly `length` bytes, with an actionable error otherwise."""
    from .errors import DispersiondError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DispersiondError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) != length:
        raise DispersiondError(
            f"{what} file {path} holds {len(data)} bytes; this needs a raw {length}-byte key "
            f"(make one with: head -c {length} /dev/urandom > KEYFILE; chmod 600 KEYFILE)")
    return data


class Discard(io.RawIOBase):
    """A writable sink that keeps nothing (for hashing or timing a stream)."""

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return len(memoryview(b))
