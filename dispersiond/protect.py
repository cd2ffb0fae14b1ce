"""Protecting one file, step by step: admit -> encode -> upload -> commit.

Each step is idempotent and recorded in the state database, so the daemon (or
a re-run of `put`) resumes any file from the step it reached, without losing it
and without leaving duplicate objects: object names are chosen and recorded
before any upload, uploads are conditional creates, and an object that already
exists under its recorded name is a finished upload.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from backends import AlreadyExists, StoreError

from . import codec, digests
from .codec import se2
from .errors import DispersiondError, IntegrityError
from .formats import PROBE, head_len
from .fsutil import atomic_output, fsync_dir
from .logs import event, log
from .placement import (DEFAULT_BLOCK, HashingWriter, PipeWriter, ShardWriter, new_object_name,
                        padded, shard_length)
from .state import FileRow, FileState
from .tap import DirectUploadFailed, Pipe, Reader, Tap
from .vault import Progress, Vault

import logging


Feeds = dict[str, "Tap | list[Pipe]"]  # staged file name -> what its uploads read from


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


class UploadReader(Reader):
    """File-like handed to a store's put: exact size, optional throttle and progress."""

    def __init__(self, f: BinaryIO, throttle: Throttle, progress: Progress | None) -> None:
        self.f, self.throttle, self.progress = f, throttle, progress

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        # Under a cap, small slices: every transfer then waits its turn in slices of
        # 64 KiB, so a small file is not held up behind megabytes of a large one.
        data = self.f.read(min(n, 64 << 10) if self.throttle.rate else n)
        self.throttle.take(len(data))
        if self.progress and data:
            self.progress(len(data))
        return data


def admit(v: Vault, source: Path, name: str | None = None) -> str:
    """Record a file to protect; returns its new id. Nothing is read yet."""
    st = source.stat()
    fid = os.urandom(16).hex()
    v.db.add_file(file_id=fid, name=name or source.name, size=st.st_size, mtime=st.st_mtime,
                  scheme=v.cfg.scheme, state=FileState.CLAIMED, source=str(source))
    event(logging.INFO, "file admitted", file_id=fid, size=st.st_size)
    return fid


def staged_sizes(cfg, layout: se2.Layout) -> dict[str, int]:
    """Bytes of each staged file, known before encoding (se2 sizes follow from the layout)."""
    pol = cfg.public
    if pol.mode == "replicate":
        sizes = {"puf": padded(layout.puf_len, pol.pad)}
    else:
        slen = shard_length(layout.puf_len, pol.k, DEFAULT_BLOCK)
        sizes = {f"shard-{i}": padded(slen, pol.pad) for i in range(pol.n)}
    return {**sizes, "prf": layout.prf_len}


def plan_rows(cfg, fid: str, layout: se2.Layout) -> list[tuple[dict, str]]:
    """Object rows (random names, one per store, no digest yet), each with the name of
    the staged file it uploads ("puf", "shard-<i>" or "prf")."""
    pol, sizes, out = cfg.public, staged_sizes(cfg, layout), []
    if pol.mode == "replicate":
        for store in pol.stores[: pol.n]:
            out.append((dict(file_id=fid, role="public", shard=None, store=store,
                             name=new_object_name(), length=layout.puf_len,
                             object_size=sizes["puf"]), "puf"))
    else:
        slen = shard_length(layout.puf_len, pol.k, DEFAULT_BLOCK)
        for i, store in enumerate(pol.stores[: pol.n]):
            out.append((dict(file_id=fid, role="public", shard=i, store=store,
                             name=new_object_name(), length=slen,
                             object_size=sizes[f"shard-{i}"]), f"shard-{i}"))
    for store in cfg.private.stores:
        out.append((dict(file_id=fid, role="private", shard=None, store=store,
                         name=new_object_name(), length=layout.prf_len,
                         object_size=layout.prf_len), "prf"))
    return out


@dataclass
class Staged:
    """One file encoded into staged objects: what the manifest rows are made from."""

    layout: se2.Layout
    size: int
    alg: str  # what every digest below is made with
    digest: str  # of the original bytes
    paths: dict[str, Path]  # staged file name ("puf", "shard-<i>", "prf") -> path
    sums: dict[str, str]  # staged file name -> digest of its bytes

    def complete(self, planned: list[tuple[dict, str]]) -> list[tuple[dict, Path]]:
        """Planned rows with their digests filled in, and the staged file each uploads."""
        return [(dict(row, digest=self.sums[key]), self.paths[key]) for row, key in planned]

    def rows(self, cfg, fid: str) -> list[tuple[dict, Path]]:
        return self.complete(plan_rows(cfg, fid, self.layout))

    def file_fields(self, cfg, key: bytes) -> dict:
        pol, lay = cfg.public, self.layout
        return dict(size=self.size, digest=self.digest, digest_alg=self.alg,
                    head_len=lay.head_len, chunk_log2=lay.chunk_log2, puf_len=lay.puf_len,
                    container_len=lay.prf_len, container_digest=self.sums["prf"],
                    key_id=se2.key_id(key).hex(),
                    public_mode=pol.mode, k=pol.k if pol.mode == "erasure" else None, n=pol.n,
                    block=DEFAULT_BLOCK if pol.mode == "erasure" else None)


def stage(v: Vault, src: BinaryIO, stage_dir: Path, prf_path: Path,
          progress: Progress | None = None,
          on_layout: Callable[[se2.Layout], Feeds] | None = None) -> Staged:
    """Encode `src` with a fresh secret: the container to `prf_path` (atomically,
    fsynced), the replica or the n erasure shards (padded, fsynced) into `stage_dir`.

    `on_layout`, if given, is called once the sizes are known and before any byte is
    written; the Taps it returns (by staged file name) are fed as the files grow, and a
    staged file given Pipes instead is not written at all: its bytes go to them."""
    cfg, pol = v.cfg, v.cfg.public
    size = os.fstat(src.fileno()).st_size
    hl = head_len(src.read(PROBE), size, cfg.dicom_header)
    src.seek(0)
    alg = cfg.digest
    # compression (if it pays) runs first, so the sizes are known before any byte is written
    prep = codec.prepare(src, size, head_len=hl, compression=cfg.compression, digest_alg=alg,
                         spool_dir=stage_dir, progress=progress)
    layout = prep.layout
    names = ["puf"] if pol.mode == "replicate" else [f"shard-{i}" for i in range(pol.n)]
    outs: list[HashingWriter] = []
    try:
        feeds = on_layout(layout) if on_layout else {}
        for name in names:
            feed = feeds.get(name)
            outs.append(PipeWriter(feed, alg) if isinstance(feed, list)
                        else HashingWriter(open(stage_dir / name, "w+b"), alg, feed))
        sink = outs[0] if pol.mode == "replicate" else ShardWriter(pol.k, pol.n, outs,
                                                                   DEFAULT_BLOCK)
        with atomic_output(prf_path) as prf_file:
            prf_feed = feeds.get("prf")  # private: always staged (it is kept), so a Tap
            prf = HashingWriter(prf_file, alg, prf_feed if isinstance(prf_feed, Tap) else None)
            enc = codec.write(prep, v.key, sink, prf)
        if pol.mode == "erasure":
            sink.close()
        for o in outs:
            o.pad_random(padded(o.n, pol.pad))
            o.sync()
    finally:
        prep.close()
        for o in outs:
            o.close()
    fsync_dir(stage_dir)
    if (enc.puf_len, enc.prf_len) != (layout.puf_len, layout.prf_len):
        raise IntegrityError("the encoder wrote other sizes than its layout says")
    writers = {**dict(zip(names, outs)), "prf": prf}
    for w in writers.values():
        if w.tap:
            w.tap.finish()
    return Staged(layout, size, alg, enc.digest,
                  {**{name: stage_dir / name for name in names}, "prf": prf_path},
                  {name: w.hexdigest() for name, w in writers.items()})


EARLY_UPLOAD_MIN = 16 << 20  # below this a file goes up in one request, which cannot start early


@dataclass
class EarlyUploads:
    """Start uploads to these stores while a large file is still being encoded.

    With `direct` (and every public object bound for one of these stores) the public
    objects are not staged at all: the encoder feeds them through memory (direct
    uploads), and if one fails the encode fails with DirectUploadFailed, to be redone.
    Otherwise they are early uploads: they read the staged files behind the encoder,
    and one that fails just leaves its object pending, to be sent from the staged copy
    like any other."""

    stores: frozenset[str]
    throttle: Throttle
    progress: Progress | None = None
    direct: bool = True

    def sends_directly(self, cfg) -> bool:
        """Are the public objects sent from memory (never staged)?"""
        pol = cfg.public
        return self.direct and set(pol.stores[: pol.n]) <= self.stores


class EarlyUploadRun:
    """The early uploads of one encode. Their names are recorded in `planned` before
    the first byte is sent, so an encode that dies leaves nothing unaccounted for: the
    next attempt (or start-up) moves them to the trash."""

    def __init__(self, v: Vault, fid: str, early: EarlyUploads) -> None:
        self.v, self.fid, self.early = v, fid, early
        self.planned: list[tuple[dict, str]] = []
        self.taps: dict[str, Tap] = {}  # one per staged file, however many uploads read it
        self.pipes: dict[str, list[Pipe]] = {}  # one per upload: each drains its own
        self.threads: list[threading.Thread] = []
        self.sent: set[str] = set()
        self.lock = threading.Lock()

    def start(self, layout: se2.Layout) -> Feeds:
        self.planned = plan_rows(self.v.cfg, self.fid, layout)
        sizes = staged_sizes(self.v.cfg, layout)
        chosen = [(row, key) for row, key in self.planned if row["store"] in self.early.stores]
        direct = self.early.sends_directly(self.v.cfg)
        self.v.db.plan_uploads(self.fid, [(row["store"], row["name"]) for row, _ in chosen])
        for row, key in chosen:
            feed: Tap | Pipe
            if direct and row["role"] == "public":
                feed = Pipe(sizes[key], row["store"])
                self.pipes.setdefault(key, []).append(feed)
            else:
                feed = self.taps.setdefault(key, Tap(sizes[key]))
            t = threading.Thread(target=self._send, args=(row, feed), daemon=True,
                                 name=f"early-upload-{row['store']}")
            self.threads.append(t)
            t.start()
        return {**self.taps, **self.pipes}

    def _all(self) -> list[Tap | Pipe]:
        return [*self.taps.values(), *(p for ps in self.pipes.values() for p in ps)]

    def _send(self, row: dict, feed: Tap | Pipe) -> None:
        e = self.early
        try:
            self.v.store(row["store"]).put(
                row["name"], UploadReader(feed.reader(), e.throttle, e.progress), feed.size)
        except Exception as exc:  # noqa: BLE001 - reported to the encoder, or left pending
            cancelled = isinstance(exc, Cancelled) or isinstance(exc.__cause__, Cancelled)
            if isinstance(feed, Pipe):
                feed.broken(Cancelled() if cancelled else DirectUploadFailed(row["store"], exc))
            if not cancelled and feed.error is None:  # else the encode failed: said there
                event(logging.WARNING, "direct upload failed; the file is encoded again"
                      if isinstance(feed, Pipe) else "early upload failed; it is retried "
                      "from the staged copy", file_id=self.fid, store=row["store"],
                      error=type(exc).__name__)
            return
        with self.lock:
            self.sent.add(row["name"])

    def join(self) -> set[str]:
        """Wait for every early upload; returns the names that landed. Raises the failure
        of a direct upload: its bytes are nowhere else."""
        for t in self.threads:
            t.join()
        for feed in self._all():
            feed.close()
        for pipes in self.pipes.values():
            for p in pipes:
                if p.reader_error is not None:
                    raise p.reader_error
        return self.sent

    def abort(self, exc: BaseException) -> None:
        """The encode failed: stop the uploads and send what landed to the trash."""
        for feed in self._all():
            feed.fail(exc)
        for t in self.threads:
            t.join()
        for feed in self._all():
            feed.close()
        abandon_planned(self.v, self.fid)


def abandon_planned(v: Vault, fid: str | None = None) -> int:
    """Names planned for early uploads of an encode that never finished (of `fid`, or
    of every file): to the trash, whether or not their objects exist."""
    return v.db.abandon_planned(fid)


def encode(v: Vault, fid: str, progress: Progress | None = None,
           early: EarlyUploads | None = None) -> None:
    """Write the private container (fsynced) and the staged public objects; plan uploads.

    With `early`, a large file's objects start uploading to the healthy stores while it
    is encoded; those that land are recorded as uploaded in the same transaction that
    marks the file encoded."""
    f = v.db.file(fid)
    work = v.work_dir(fid)
    shutil.rmtree(work, ignore_errors=True)  # a crash mid-encode left a partial stage
    work.mkdir(parents=True)
    abandon_planned(v, fid)  # ... and perhaps early uploads under names now unused
    try:
        src = open(Path(f.source), "rb")
    except OSError as exc:
        raise SourceGone(f"cannot read the file to protect ({exc.strerror})") from exc
    big = f.size >= EARLY_UPLOAD_MIN
    run = EarlyUploadRun(v, fid, early) if early and early.stores and big else None
    try:
        with src:
            st = stage(v, src, work, v.prf_path(fid), progress, run.start if run else None)
        sent = run.join() if run else set()
    except BaseException as exc:
        if run:
            run.abort(exc)
        shutil.rmtree(work, ignore_errors=True)  # e.g. a full disk: give the space back
        raise
    planned = run.planned if run else plan_rows(v.cfg, fid, st.layout)
    rows = [dict(row, state="uploaded" if row["name"] in sent else "pending")
            for row, _ in st.complete(planned)]
    with v.db.tx() as conn:
        v.db.drop_objects(fid, conn, pending_only=True)
        v.db.drop_planned(fid, conn)
        v.db.add_objects(conn, rows)
        v.db.set_state(fid, FileState.ENCODED, conn, error=None, **st.file_fields(v.cfg, v.key))
    for store in {row["store"] for row in rows if row["state"] == "uploaded"}:
        v.db.store_ok(store)
    event(logging.INFO, "file encoded", file_id=fid, size=st.size,
          public_bytes=st.layout.puf_len, private_bytes=st.layout.prf_len, sent_early=len(sent))


class SourceGone(DispersiondError):
    """The file to protect vanished or cannot be read: it goes to quarantine."""


def upload_one(v: Vault, obj, throttle: Throttle, progress: Progress | None = None,
               record: bool = True) -> None:
    """Upload one planned object; an object already there under its name is a finished upload.

    With record=False the caller records the confirmation (the daemon batches them: an
    upload whose record a crash lost is found again under its name and accepted)."""
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
    if record:
        v.db.set_objects_uploaded([obj.id])
        v.db.store_ok(obj.store)


def _same_object(store, obj) -> bool:
    info = store.stat(obj.name)
    if info.size != obj.object_size:
        return False
    theirs = info.checksums.get(obj.digest_alg)  # the store's own, when of the same kind
    if theirs:
        return theirs == obj.digest
    h = digests.new(obj.digest_alg)
    for chunk in store.get(obj.name):
        h.update(chunk)
    return h.hexdigest() == obj.digest


def upload(v: Vault, fid: str, throttle: Throttle | None = None,
           progress: Progress | None = None) -> list[tuple[str, Exception]]:
    """Upload every pending object of a file in parallel; returns the failures."""
    throttle = throttle or Throttle(v.cfg.schedule.bandwidth())
    pending = v.db.objects(fid, states=("pending",))
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


def transfer_bytes(cfg, size: int) -> int:
    """Bytes a `put` of a `size`-byte file reads and sends (for its progress bar)."""
    rows = plan_rows(cfg, "", se2.Layout(se2.DEFAULT_CHUNK_LOG2, size, 0))
    return size + sum(row["object_size"] for row, _ in rows)


def _readiness(v: Vault, f: FileRow) -> tuple[bool, bool]:
    """(restorable from its confirmed uploads, every upload confirmed), from one read of
    the file's objects."""
    objs = v.db.objects(f.file_id)
    up = [o for o in objs if o.state == "uploaded"]
    need = f.k if f.public_mode == "erasure" else 1
    restorable = (sum(1 for o in up if o.role == "public") >= need
                  and any(o.role == "private" for o in up))
    return restorable, len(up) == len(objs)


def commit(v: Vault, fid: str) -> str:
    """Advance an encoded file as far as its confirmed uploads allow; returns the new state."""
    commit_many(v, [v.db.file(fid)])
    return v.db.file(fid).state


def commit_many(v: Vault, files: list[FileRow]) -> list[str]:
    """Commit every encoded file among `files` that its confirmed uploads make
    restorable, all in one transaction (one fsync, however many files: a stream of small
    files settles many at a time). Returns the ids committed."""
    ready: list[tuple[str, bool]] = []
    for f in files:
        if f.state == FileState.ENCODED:
            restorable, complete = _readiness(v, f)
            if restorable:
                ready.append((f.file_id, complete))
    if not ready:
        return []
    with v.db.tx() as conn:
        v.db.set_states([fid for fid, _ in ready], FileState.COMMITTED, conn, error=None)
        v.db.mark_manifest_dirty(conn)
    for fid, complete in ready:
        if complete:
            shutil.rmtree(v.work_dir(fid), ignore_errors=True)
        event(logging.INFO, "file committed", file_id=fid, complete=complete)
    return [fid for fid, _ in ready]


def all_uploaded(v: Vault, fid: str) -> bool:
    return not v.db.objects(fid, not_state="uploaded")


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
    throttle = Throttle(v.cfg.schedule.bandwidth())
    if f.state == FileState.CLAIMED:
        if on_step:
            on_step("encode")
        stores = frozenset(s.name for s in v.cfg.stores)
        try:
            encode(v, fid, progress, EarlyUploads(stores, throttle, progress))
        except DirectUploadFailed as exc:  # again, staged: what fails now is kept for resume
            log.warning("file %s: %s; encoding it again with a staged copy for that store",
                        fid, exc)
            encode(v, fid, progress, EarlyUploads(stores - {exc.store}, throttle, progress))
    if on_step:
        on_step("upload")
    failures = upload(v, fid, throttle, progress)
    state = commit(v, fid)
    if failures:
        stores = sorted({s for s, _ in failures})
        first = failures[0][1]
        v.db.update_file(fid, error=f"upload to {', '.join(stores)} failed: {first}",
                         attempts=f.attempts + 1)
        if state != FileState.COMMITTED:
            raise DispersiondError(
                f"file {fid}: upload to store(s) {', '.join(stores)} failed ({first}). The file "
                "is encoded and kept in the state directory; it is retried by 'dispersiond run' "
                "or 'dispersiond put --resume'")
        log.warning("file %s is restorable but store(s) %s still lack copies; 'dispersiond "
                    "repair' or the daemon will finish them", fid, ", ".join(stores))
    if all_uploaded(v, fid) and state == FileState.COMMITTED:
        shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    return state
