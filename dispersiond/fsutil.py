"""Crash-safe file writing: a reader sees the old file or the whole new one, never half."""
from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator


#: Modes of what holds state (names, paths, keys to files): owner only, whatever the umask.
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (made if missing, parents too)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    restrict(path, PRIVATE_DIR)
    return path


def restrict(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Set `mode` on `path` if it is ours and has another; a file owned by someone else (a
    read-only probe as another user) is left as it is."""
    try:
        st = os.lstat(path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass


def read_whole(path: str | Path) -> bytes:
    """A small file's bytes in four system calls (open, fstat, read, close), where
    `Path.read_bytes` makes eight (its buffered open adds an isatty ioctl, seeks, and
    reads to an empty read). Each call lets another thread take the GIL, and a burst of
    small records reads a file per record on threads that share it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)  # a byte more than it has: a file that grew shows it
        if len(data) == size:
            return data  # a short read of a regular file is its end
        parts = [data]
        while part := os.read(fd, max(size, 1 << 16)):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def write_new(path: str | Path, data: bytes) -> None:
    """Write a small new file (owner only, replacing any file of that name) in one write,
    unsynced: for a file nothing refers to until the caller's barrier syncs it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except FileExistsError:  # what a crash left: replaced by a new file, with our mode
        os.unlink(path)
        fd = os.open(path, flags, PRIVATE_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (before a library opens it
    under the umask)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        return
    restrict(path)  # os.open's mode is cut by the umask only, never widened: make sure


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str | Path) -> None:
    """fsync a file by its name, after it was written and closed. On Linux any descriptor
    of the inode will do, and a write-back error not yet seen is reported to it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(paths: list[str | Path]) -> None:
    """fsync each path; the first error is raised after the others are synced."""
    first: OSError | None = None
    for path in paths:
        try:
            fsync_path(path)
        except OSError as exc:
            first = first or exc
    if first is not None:
        raise first


#: fsyncs of one barrier in flight at once. Each fsync waits for the disk to flush its
#: cache; concurrent ones share the journal's commit and that flush (BENCHMARKS.md,
#: "Held fragments"), one after the other each pays for its own.
SYNCERS = 16
_syncers: ThreadPoolExecutor | None = None
_syncers_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _syncers
    with _syncers_lock:
        if _syncers is None:
            _syncers = ThreadPoolExecutor(SYNCERS, thread_name_prefix="fsync")
        return _syncers


def sync_batch(files: Iterable[str | Path], dirs: Iterable[str | Path]) -> None:
    """One durability barrier for many files written without their own fsyncs: each
    file's data and inode, then each folder once (new entries, renames).

    Written first and synced after, the files share the filesystem's journal commits:
    the first fsync commits the metadata of all of them, so a batch costs far less than
    a file-by-file fsync and folder fsync (BENCHMARKS.md, "Batched encode"). The files'
    fsyncs run side by side (SYNCERS at once); the first error is raised once all are
    through. The folders follow, once all the files are.

    Each of the SYNCERS tasks syncs its share of the files one after the other: a task
    (a future, a hand-off and a wake-up) per file cost more CPU than the fsyncs did."""
    files = list(files)
    if len(files) > 1:
        shares = [files[i::SYNCERS] for i in range(min(SYNCERS, len(files)))]
        futs = [_pool().submit(_fsync_all, share) for share in shares]
        errors = [e for fut in futs if (e := fut.exception()) is not None]
        if errors:
            raise errors[0]
    else:
        for path in files:
            fsync_path(path)
    for path in dict.fromkeys(dirs):  # each once, in the order given
        fsync_dir(path)


#: How much a large output may have written before the kernel is asked to start writing
#: it out (`atomic_output(writeback=True)`).
WRITEBACK_EVERY = 32 << 20


class _Writeback:
    """A file whose written bytes the kernel starts writing out every WRITEBACK_EVERY
    bytes (posix_fadvise DONTNEED starts writeback of dirty pages without waiting), so
    the final fsync of a large file waits for the last stretch only, not for all of it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.n, self.mark = f, 0, 0

    def fileno(self) -> int:
        return self.f.fileno()

    def write(self, data) -> int:
        n = self.f.write(data)
        self.n += n
        if self.n - self.mark >= WRITEBACK_EVERY:
            self.f.flush()
            os.posix_fadvise(self.f.fileno(), self.mark, self.n - self.mark,
                             os.POSIX_FADV_DONTNEED)
            self.mark = self.n
        return n

    def flush(self) -> None:
        self.f.flush()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = True,
                  mode: int = 0o600, sync: bool = True, sync_dir: bool = True,
                  writeback: bool = False) -> Iterator[BinaryIO]:
    """Write `path` via a temporary file in the same folder, fsync, then rename.

    On any exception the temporary file is removed and `path` is untouched.
    With overwrite=False an existing `path` is never replaced (FileExistsError).
    With sync=False neither the file nor its folder is fsynced: a reader still sees the
    old file or the whole new one while the system runs, but only a later barrier
    (`sync_batch`) makes it durable; until then nothing may depend on it surviving a
    power cut.
    With sync_dir=False (and sync) the file is fsynced but not its folder: the caller
    does that once for many files (until then a crash may lose the new name, never
    expose a partial file under it).
    With writeback=True a large file is written out to disk as it grows (where the
    system can be asked to), so the fsync at the end is short.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield (_Writeback(f) if writeback and hasattr(os, "posix_fadvise")  # type: ignore
                   else f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile
            os.unlink(tmp)
        if sync and sync_dir:
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
