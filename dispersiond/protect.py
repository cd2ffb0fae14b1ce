"""Protecting one file, step by step: admit -> encode -> upload -> commit.

Each step is idempotent and recorded in the state database, so the daemon (or
a re-run of `put`) resumes any file from the step it reached, without losing it
and without leaving duplicate objects: object names are chosen and recorded
before any upload, uploads are conditional creates, and an object that already
exists under its recorded name is a finished upload.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from backends import AlreadyExists, StoreError

from . import codec
from .codec import se2
from .errors import DispersiondError, IntegrityError
from .formats import PROBE, head_len
from .fsutil import atomic_output, fsync_dir
from .logs import event, log
from .placement import (DEFAULT_BLOCK, HashingWriter, ShardWriter, new_object_name, padded,
                        shard_length)
from .vault import Progress, Vault

import logging


class HashingReader:
    """Reads through while hashing, so the original's digest costs no second pass."""

    def __init__(self, f: BinaryIO, progress: Progress | None = None) -> None:
        self.f, self.h, self.progress = f, hashlib.sha256(), progress

    def readinto(self, buf) -> int:
        n = self.f.readinto(buf)
        if n:
            self.h.update(memoryview(buf)[:n])
            if self.progress:
                self.progress(n)
        return n

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        if self.progress and data:
            self.progress(len(data))
        return data


class Throttle:
    """A token bucket shared by all uploads: caps the average bytes per second.

    With `cancel` set (the daemon stopping), a waiting or next transfer raises
    Cancelled at once instead of sleeping on.
    """

    def __init__(self, rate: int | None, cancel: threading.Event | None = None) -> None:
        self.rate = rate
        self.cancel = cancel
        self.lock = threading.Lock()
        self.allowance = float(rate or 0)
        self.t = time.monotonic()

    def take(self, n: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.allowance = min(self.rate, self.allowance + (now - self.t) * self.rate)
            self.t = now
            self.allowance -= n
            wait = -self.allowance / self.rate if self.allowance < 0 else 0
        if wait <= 0:
            return
        if self.cancel is None:
            time.sleep(wait)
        elif self.cancel.wait(wait):
            raise Cancelled()


class Cancelled(Exception):
    """Raised inside a transfer or encode when the daemon is stopping."""


class UploadReader:
    """File-like handed to a store's put: exact size, optional throttle and progress."""

    def __init__(self, f: BinaryIO, throttle: Throttle, progress: Progress | None) -> None:
        self.f, self.throttle, self.progress = f, throttle, progress

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        data = self.f.read(min(n, 1 << 20) if self.throttle.rate else n)
        self.throttle.take(len(data))
        if self.progress and data:
            self.progress(len(data))
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        memoryview(buf)[: len(data)] = data
        return len(data)


def admit(v: Vault, source: Path, name: str | None = None) -> str:
    """Record a file to protect; returns its new id. Nothing is read yet."""
    st = source.stat()
    fid = os.urandom(16).hex()
    v.db.add_file(file_id=fid, name=name or source.name, size=st.st_size, mtime=st.st_mtime,
                  scheme=v.cfg.scheme, state="claimed", source=str(source))
    event(logging.INFO, "file admitted", file_id=fid, size=st.st_size)
    return fid


@dataclass
class Staged:
    """One file encoded into staged objects: what the manifest rows are made from."""

    enc: codec.Encoded
    size: int
    sha256: str  # of the original bytes
    head_len: int
    public: list[tuple[Path, int, str]]  # (staged path, stored size, SHA-256) per replica/shard
    prf: tuple[Path, str]  # (container path, SHA-256)

    def rows(self, cfg, fid: str) -> list[tuple[dict, Path]]:
        """Object rows (random names, one per store) with the staged file each uploads."""
        pol, out = cfg.public, []
        if pol.mode == "replicate":
            path, size, digest = self.public[0]
            for store in pol.stores[: pol.n]:
                out.append((dict(file_id=fid, role="public", shard=None, store=store,
                                 name=new_object_name(), length=self.enc.puf_len,
                                 object_size=size, sha256=digest), path))
        else:
            slen = shard_length(self.enc.puf_len, pol.k, DEFAULT_BLOCK)
            for i, (store, (path, size, digest)) in enumerate(zip(pol.stores, self.public)):
                out.append((dict(file_id=fid, role="public", shard=i, store=store,
                                 name=new_object_name(), length=slen, object_size=size,
                                 sha256=digest), path))
        for store in cfg.private.stores:
            out.append((dict(file_id=fid, role="private", shard=None, store=store,
                             name=new_object_name(), length=self.enc.prf_len,
                             object_size=self.enc.prf_len, sha256=self.prf[1]), self.prf[0]))
        return out

    def file_fields(self, cfg, key: bytes) -> dict:
        pol = cfg.public
        return dict(size=self.size, sha256=self.sha256, head_len=self.head_len,
                    chunk_log2=se2.DEFAULT_CHUNK_LOG2, puf_len=self.enc.puf_len,
                    prf_len=self.enc.prf_len, prf_sha256=self.prf[1],
                    key_id=se2.key_id(key).hex(), public_mode=pol.mode,
                    k=pol.k if pol.mode == "erasure" else None, n=pol.n,
                    block=DEFAULT_BLOCK if pol.mode == "erasure" else None)


def stage(v: Vault, src: BinaryIO, stage_dir: Path, prf_path: Path,
          progress: Progress | None = None) -> Staged:
    """Encode `src` with a fresh secret: the container to `prf_path` (atomically,
    fsynced), the replica or the n erasure shards (padded, fsynced) into `stage_dir`."""
    cfg, pol = v.cfg, v.cfg.public
    size = os.fstat(src.fileno()).st_size
    hl = head_len(src.read(PROBE), size, cfg.dicom_header)
    src.seek(0)
    reader = HashingReader(src, progress)
    names = ["puf"] if pol.mode == "replicate" else [f"shard-{i}" for i in range(pol.n)]
    outs = [HashingWriter(open(stage_dir / name, "wb")) for name in names]
    sink = outs[0] if pol.mode == "replicate" else ShardWriter(pol.k, pol.n, outs, DEFAULT_BLOCK)
    try:
        with atomic_output(prf_path) as prf_file:
            prf = HashingWriter(prf_file)
            enc = codec.encode_stream("se2", v.key, reader, size, sink, prf, head_len=hl)
        if pol.mode == "erasure":
            sink.close()
        for o in outs:
            o.pad_random(padded(o.n, pol.pad))
            o.f.flush()
            os.fsync(o.f.fileno())
    finally:
        for o in outs:
            o.f.close()
    fsync_dir(stage_dir)
    return Staged(enc, size, reader.h.hexdigest(), hl,
                  [(stage_dir / name, o.n, o.hexdigest()) for name, o in zip(names, outs)],
                  (prf_path, prf.hexdigest()))


def encode(v: Vault, fid: str, progress: Progress | None = None) -> None:
    """Write the private container (fsynced) and the staged public objects; plan uploads."""
    f = v.db.file(fid)
    work = v.work_dir(fid)
    shutil.rmtree(work, ignore_errors=True)  # a crash mid-encode left a partial stage
    work.mkdir(parents=True)
    try:
        src = open(Path(f.source), "rb")
    except OSError as exc:
        raise SourceGone(f"cannot read the file to protect ({exc.strerror})") from exc
    try:
        with src:
            st = stage(v, src, work, v.prf_path(fid), progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # e.g. a full disk: give the space back
        raise
    rows = [dict(row, state="pending") for row, _ in st.rows(v.cfg, fid)]
    with v.db.tx() as conn:
        conn.execute("DELETE FROM objects WHERE file_id=? AND state='pending'", (fid,))
        v.db.add_objects(conn, rows)
        v.db.update_file(fid, conn, state="encoded", error=None, **st.file_fields(v.cfg, v.key))
    event(logging.INFO, "file encoded", file_id=fid, size=st.size, public_bytes=st.enc.puf_len,
          private_bytes=st.enc.prf_len)


class SourceGone(DispersiondError):
    """The file to protect vanished or cannot be read: it goes to quarantine."""


def upload_one(v: Vault, obj, throttle: Throttle, progress: Progress | None = None) -> None:
    """Upload one planned object; an object already there under its name is a finished upload."""
    path = v.staged_path(obj.file_id, obj.role, obj.shard)
    store = v.store(obj.store)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != obj.object_size:
                raise IntegrityError(f"staged object for file {obj.file_id} has the wrong size")
            store.put(obj.name, UploadReader(f, throttle, progress), obj.object_size)
    except AlreadyExists:
        # Our own earlier upload (names are 128-bit random): a crash, or a retried put
        # whose first answer was lost. Accept it only if it holds exactly our bytes.
        if not _same_object(store, obj):
            raise IntegrityError(f"store {obj.store!r}: object {obj.name} exists but does not "
                                 "hold the bytes planned for it") from None
    v.db.set_object_state(obj.id, "uploaded")
    v.db.store_ok(obj.store)


def _same_object(store, obj) -> bool:
    info = store.stat(obj.name)
    if info.size != obj.object_size:
        return False
    theirs = info.checksums.get("sha256")
    if theirs:
        return theirs == obj.sha256
    h = hashlib.sha256()
    for chunk in store.get(obj.name):
        h.update(chunk)
    return h.hexdigest() == obj.sha256


def upload(v: Vault, fid: str, throttle: Throttle | None = None,
           progress: Progress | None = None) -> list[tuple[str, Exception]]:
    """Upload every pending object of a file in parallel; returns the failures."""
    throttle = throttle or Throttle(v.cfg.schedule.bandwidth())
    pending = v.db.objects(fid, "state='pending'")
    failures: list[tuple[str, Exception]] = []

    def one(obj):
        try:
            upload_one(v, obj, throttle, progress)
        except (StoreError, OSError, IntegrityError) as exc:
            v.db.store_error(obj.store, str(exc))
            event(logging.WARNING, "upload failed", file_id=fid, store=obj.store,
                  error=type(exc).__name__)
            failures.append((obj.store, exc))

    with ThreadPoolExecutor(max_workers=min(v.cfg.upload_workers, max(1, len(pending)))) as ex:
        list(ex.map(one, pending))
    return failures


def restorable(v: Vault, fid: str) -> bool:
    f = v.db.file(fid)
    objs = v.db.objects(fid, "state='uploaded'")
    pub = sum(1 for o in objs if o.role == "public")
    need = f.k if f.public_mode == "erasure" else 1
    return pub >= need and any(o.role == "private" for o in objs)


def commit(v: Vault, fid: str) -> str:
    """Advance an encoded file as far as its confirmed uploads allow; returns the new state."""
    f = v.db.file(fid)
    if f.state not in ("encoded", "committed"):
        return f.state
    if not restorable(v, fid):
        return f.state
    complete = not v.db.objects(fid, "state!='uploaded'")
    with v.db.tx() as conn:
        v.db.update_file(fid, conn, state="committed", error=None)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest_dirty', '1')")
    if complete:
        shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    event(logging.INFO, "file committed", file_id=fid, complete=complete)
    return "committed"


def all_uploaded(v: Vault, fid: str) -> bool:
    return not v.db.objects(fid, "state!='uploaded'")


def protect_file(v: Vault, path: Path, name: str | None = None,
                 progress: Progress | None = None,
                 on_step: Callable[[str], None] | None = None) -> str:
    """`put`: all steps for one file now. Raises if an upload failed (state kept for resume)."""
    fid = admit(v, path, name)
    resume(v, fid, progress, on_step)
    return fid


def resume(v: Vault, fid: str, progress: Progress | None = None,
           on_step: Callable[[str], None] | None = None) -> str:
    """Run the remaining steps of one file; returns its state."""
    f = v.db.file(fid)
    if f.state == "claimed":
        if on_step:
            on_step("encode")
        encode(v, fid, progress)
    if on_step:
        on_step("upload")
    failures = upload(v, fid, progress=progress)
    state = commit(v, fid)
    if failures:
        stores = sorted({s for s, _ in failures})
        first = failures[0][1]
        v.db.update_file(fid, error=f"upload to {', '.join(stores)} failed: {first}",
                         attempts=f.attempts + 1)
        if state != "committed":
            raise DispersiondError(
                f"file {fid}: upload to store(s) {', '.join(stores)} failed ({first}). The file "
                "is encoded and kept in the state directory; it is retried by 'dispersiond run' "
                "or 'dispersiond put --resume'")
        log.warning("file %s is restorable but store(s) %s still lack copies; 'dispersiond "
                    "repair' or the daemon will finish them", fid, ", ".join(stores))
    if all_uploaded(v, fid) and state == "committed":
        shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    return state
