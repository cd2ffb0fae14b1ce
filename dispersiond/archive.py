"""The archive: the handle every operation takes, for the command line and the daemon
alike: config, master key, state database, stores, and the lock on the state directory.

Layout of the state directory:
  state.db              SQLite (WAL): files, objects, audit log, trash, and the
                        device's own copy of each small file's private container
  prf/<file_id>.prf     ... and of each larger file's
  work/<file_id>/       staged public objects until every upload is confirmed
  claimed/<file_id>     originals the daemon took from the inbox
  lock                  held by whoever changes state (the daemon, put, forget, ...)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from backends import NotFound, Store, StoreError

from . import audit, scratch
from .config import Config
from .errors import DispersiondError
from .fsutil import atomic_output, read_whole
from .held import Held
from .keys import load_master_key
from .logs import log
from .state import FileRow, FileState, StateDB
from .stores import Stores

Progress = Callable[[int], None]


class Busy(DispersiondError):
    """Another dispersiond process holds the state directory."""


class Archive:
    def __init__(self, cfg: Config, master_key: bytes | None = None) -> None:
        self.cfg = cfg
        self.root = cfg.state_path
        for sub in ("prf", "work", "claimed"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self.key = master_key if master_key is not None else load_master_key(cfg)
        self.db = StateDB(self.root / "state.db")
        # one path join per file instead of two (a burst asks for thousands of these)
        self._prf, self._work = self.root / "prf", self.root / "work"
        self.stores = Stores(cfg)
        self._lock_fd: int | None = None
        self._stores_lock = threading.Lock()
        #: Small files' public fragments between their encode and their pack (held.py).
        self.held = Held()
        #: Stores that answered Unavailable in this process: tried last, not waited on again.
        self.down: set[str] = set()

    # --- the device's own copy of each private container: a small file's in the state
    #     database (state/containers.py), a larger one's in prf/
    def container_path(self, fid: str) -> Path:
        """Where a larger file's container is kept (see `container` for any file's)."""
        return self._prf / f"{fid}.prf"

    def container(self, fid: str) -> bytes | None:
        """The file's own container, wherever it is kept; None if the device has none."""
        data = self.db.container(fid)
        if data is not None:
            return data
        try:
            return read_whole(self.container_path(fid))
        except FileNotFoundError:
            return None

    def container_file(self, fid: str) -> Path:
        """A file holding the container, for a reader that needs one (an upload of its
        own): a small file's is first written out of the database."""
        path = self.container_path(fid)
        if not path.exists() and (data := self.db.container(fid)) is not None:
            with atomic_output(path) as out:
                out.write(data)
        return path

    def has_container(self, fid: str) -> bool:
        return self.db.has_container(fid) or self.container_path(fid).exists()

    def keep_container(self, fid: str, data: bytes) -> None:
        """Replace the file's container where it is kept (the database for a small file)."""
        if self.db.has_container(fid):
            with self.db.tx() as conn:
                self.db.put_containers(conn, [(fid, data)])
            return
        with atomic_output(self.container_path(fid)) as out:
            out.write(data)

    def drop_container(self, fid: str) -> None:
        """The device's copy, wherever it is kept (gone: the database overwrites it)."""
        self.db.drop_containers([fid])
        self.container_path(fid).unlink(missing_ok=True)

    # --- paths

    def work_dir(self, fid: str) -> Path:
        return self._work / fid

    def staged_dirs(self) -> set[str]:
        """Names in the staging area (files' folders, packs being built): one listing
        for a batch instead of a stat per file, where small files stage nothing (held.py)."""
        try:
            return set(os.listdir(self._work))
        except FileNotFoundError:
            return set()

    def staged_path(self, fid: str, role: str, shard: int | None) -> Path:
        if role == "private":
            return self.container_file(fid)
        return self.work_dir(fid) / ("puf" if shard is None else f"shard-{shard}")

    def store(self, name: str) -> Store:
        with self._stores_lock:
            return self.stores[name]

    def attach_store(self, name: str, store: Store) -> None:
        """Serve the configured store `name` from `store` (an in-memory store for unit tests
        and dry runs: `backends.memory`); the configuration still says where data goes."""
        self.cfg.store(name)  # an unknown name fails here, as in the configuration
        with self._stores_lock:
            self.stores.attach(name, store)

    # --- exclusive use of the state directory
    def lock(self, wait: bool = False) -> None:
        """Take the state directory for this process; Busy if another one has it."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        # `status` probes with a shared lock for an instant: retry for a second before
        # taking a holder for a running daemon (or `put`).
        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Busy(f"the state directory {self.root} is in use by dispersiond pid {holder}: "
                       "stop it first (systemctl stop dispersiond), or drop files into the "
                       "inbox for the running daemon") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        self.stores.close()
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- lookups
    def resolve(self, ref: str) -> FileRow:
        """A file by id, id prefix or original name; an actionable error otherwise."""
        rows = [r for r in self.db.find(ref) if r.state != FileState.FAILED]
        if not rows:
            raise DispersiondError(f"no protected file matches {ref!r} (see 'dispersiond ls')")
        if len(rows) > 1:
            ids = ", ".join(r.file_id[:12] for r in rows[:5])
            raise DispersiondError(f"{ref!r} matches {len(rows)} files ({ids}...): give the id")
        return rows[0]

    def audit(self, event: str, file_id: str | None = None, **detail) -> None:
        audit.append(self.db, self.key, event, file_id, **detail)

    # --- trash: deletions that must happen even if a store is down right now
    def discard(self, store: str, name: str) -> None:
        self.db.trash(store, name)

    def empty_trash(self) -> tuple[int, int]:
        """Delete what the trash holds, share copies whose links have expired included;
        returns (deleted, still waiting)."""
        self.db.trash_expired_copies(time.time())
        done = waiting = 0
        for store, name in self.db.trashed():
            try:
                self.store(store).delete(name)
            except NotFound:
                pass
            except (StoreError, KeyError) as exc:
                log.warning("could not delete an object from store %s yet: %s", store, exc)
                waiting += 1
                continue
            self.db.untrash(store, name)
            done += 1
        return done, waiting


@contextlib.contextmanager
def open_archive(cfg: Config, *, exclusive: bool = False,
               master_key: bytes | None = None) -> Iterator[Archive]:
    v = Archive(cfg, master_key)
    try:
        if exclusive:
            v.lock()
        scratch.sweep(v.root / "work")  # what killed processes left: only theirs
        yield v
    finally:
        v.close()
