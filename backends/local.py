"""A directory as a store: the embedded default, and the reference the cloud stores are tested against.

Name mapping: each '/'-segment but the last is a subdirectory; the last is a file whose
name ends in '%'. '%' inside a segment is written '%25', so no directory name ever ends
in a lone '%': an object "a" (file "a%") and an object "a/b" (directory "a", file "b%")
live side by side as they do in a bucket, and temporary files (".tmp-*", no trailing
'%') are never mistaken for objects.

Durability: bytes go to a temporary file in the target directory, are fsynced, then
hard-linked to the final name (link fails if the name exists: conditional create without
a race), and the directory is fsynced. The filesystem must support hard links (ext4, xfs,
btrfs, tmpfs do; FAT/exFAT do not). A temporary file a killed writer left is deleted by
the next `list` that walks past it once it has not changed for STALE_TMP seconds (a live
put writes to its file continuously; a listing is what the daemon's sweep runs).
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Iterator

from .base import (
    AlreadyExists,
    Denied,
    NotFound,
    ObjectInfo,
    Store,
    StoreError,
    Unavailable,
    check_key,
    check_range,
    iter_parts,
    link_seconds,
    translating,
)

#: A temporary file untouched this long belongs to a writer that is gone.
STALE_TMP = 3600.0


def _drop_if_stale(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > STALE_TMP:
            path.unlink()
    except OSError:
        pass  # raced with its writer or another sweep, or not ours to remove: leave it


def _encode(segment: str) -> str:
    return segment.replace("%", "%25")


def _decode(segment: str) -> str:
    return segment.replace("%25", "%")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    """Objects as files under one directory."""

    kind = "local"

    def __init__(self, name: str, *, path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> None:
        self.name = name
        self.root = Path(path).expanduser().absolute()
        self.chunk_size = chunk_size
        with self._errors("open"):
            self.root.mkdir(parents=True, exist_ok=True)

    def _classify(self, exc: BaseException) -> type[StoreError] | None:
        if isinstance(exc, FileNotFoundError):
            # With the directory itself gone (an unmounted disk) nothing is known to be missing.
            return NotFound if self.root.is_dir() else Unavailable
        if isinstance(exc, PermissionError):
            return Denied
        if isinstance(exc, OSError):
            return Unavailable  # ENOSPC, EIO: the disk may be freed or come back
        return None

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return translating(self.name, what, self._classify)

    def _path(self, key: str) -> Path:
        *dirs, leaf = check_key(key).split("/")
        return self.root.joinpath(*map(_encode, dirs), _encode(leaf) + "%")

    def _make_dirs(self, directory: Path) -> None:
        """Create missing parents, fsyncing each new entry's parent so it survives a crash."""
        if directory == self.root or directory.is_dir():
            return
        self._make_dirs(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            return
        _fsync_dir(directory.parent)

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        final = self._path(key)
        with self._errors(f"put {key!r}"):
            self._make_dirs(final.parent)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in iter_parts(src, size, self.chunk_size):
                        out.write(part)
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    raise AlreadyExists(self.name, f"put {key!r}: object exists") from None
                _fsync_dir(final.parent)
            finally:
                os.unlink(tmp)
        return ObjectInfo(key, size)

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_range(start, length)
        path = self._path(key)
        with self._errors(f"get {key!r}"):
            f = open(path, "rb")
        return self._read(f, key, start, length)

    def _read(self, f: BinaryIO, key: str, start: int, length: int | None) -> Iterator[bytes]:
        with f, self._errors(f"get {key!r}"):
            f.seek(start)
            left = float("inf") if length is None else length
            while left > 0:
                chunk = f.read(int(min(self.chunk_size, left)))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        with self._errors(f"stat {key!r}"):
            return ObjectInfo(key, path.stat().st_size)

    def list(self, prefix: str = "") -> Iterator[str]:
        *dirs, _ = prefix.split("/")
        if any(d in ("", ".", "..") for d in dirs):
            return  # no valid name has such a segment; and the walk must not leave the root
        top = self.root.joinpath(*map(_encode, dirs))
        with self._errors(f"list {prefix!r}"):
            if not self.root.is_dir():
                raise FileNotFoundError(self.root)
            for dirpath, _dirnames, filenames in os.walk(top):
                rel = Path(dirpath).relative_to(self.root).parts
                for filename in filenames:
                    if filename.startswith(".tmp-"):
                        _drop_if_stale(Path(dirpath, filename))
                    elif filename.endswith("%"):
                        key = "/".join(_decode(p) for p in (*rel, filename[:-1]))
                        if key.startswith(prefix):
                            yield key

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors(f"delete {key!r}"):
            path.unlink()
            _fsync_dir(path.parent)

    def presign(self, key: str, expires: timedelta) -> str:
        """A file:// URL: readable by whoever can read this directory; no expiry is enforced."""
        link_seconds(expires)
        return self._path(key).as_uri()

