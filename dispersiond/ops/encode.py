"""Encoding one file into staged objects: the private container, the replica or the n
erasure shards, their planned names and digests, and the early uploads that read
behind the encoder (or, for a large file, the direct uploads fed from memory). The `protect` operation (ops/protect.py) drives this.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from .. import codec
from ..codec import se2
from ..errors import IntegrityError
from ..codec.headers import PROBE, head_len
from ..fsutil import atomic_output, fsync_dir, write_new
from ..layout import Layout
from ..logs import event
from ..placement import (DEFAULT_BLOCK, HashingWriter, PipeWriter, ShardWriter, new_object_name,
                         padded, shard_length)
from ..tap import DirectUploadFailed, Pipe, Tap
from ..archive import Progress, Archive
from .packing import remove_staged_packs
from .upload import Cancelled, Throttle, UploadReader


Feeds = dict[str, "Tap | list[Pipe]"]  # staged file name -> what its uploads read from


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
    #: The public fragments kept in memory instead of staged (held.py), by staged name.
    held: dict[str, bytes] | None = None
    #: With them, the container, not written out: the batch's transaction keeps it in the
    #: state database (state/containers.py).
    container: bytes | None = None

    def complete(self, planned: list[tuple[dict, str]]) -> list[tuple[dict, Path]]:
        """Planned rows with their digests filled in, and the staged file each uploads."""
        return [(dict(row, digest=self.sums[key]), self.paths[key]) for row, key in planned]

    def rows(self, cfg, fid: str) -> list[tuple[dict, Path]]:
        return self.complete(plan_rows(cfg, fid, self.layout))

    def layout_of(self, cfg, key: bytes, scheme: str = "se2") -> Layout:
        """The file's layout as this encode made it (under the config's placement)."""
        pol, lay = cfg.public, self.layout
        erasure = pol.mode == "erasure"
        return Layout(size=self.size, digest=self.digest, digest_alg=self.alg, scheme=scheme,
                      head_len=lay.head_len, chunk_log2=lay.chunk_log2, puf_len=lay.puf_len,
                      prf_len=lay.prf_len, prf_digest=self.sums["prf"],
                      key_id=se2.key_id(key).hex(), mode=pol.mode,
                      k=pol.k if erasure else None, n=pol.n,
                      block=DEFAULT_BLOCK if erasure else None)

    def durable(self) -> tuple[list[Path], list[str]]:
        """(files, folders) a barrier must fsync for this encode to survive a power cut:
        every staged file written locally and the container, then their folders. The
        folders as text: a batch dedupes them, and a Path's hash costs ten times a str's."""
        held = self.held or {}
        files = [p for k, p in self.paths.items() if k not in held and (
            self.container is None if k == "prf" else p.exists())]  # a written container
        return files, list(dict.fromkeys(os.path.dirname(p) for p in files))

    def file_fields(self, cfg, key: bytes) -> dict:
        """State columns to record (the scheme was recorded at admission)."""
        fields = self.layout_of(cfg, key).row_fields()
        del fields["scheme"]
        return fields


def stage(v: Archive, src: BinaryIO, stage_dir: Path, container_path: Path,
          progress: Progress | None = None,
          on_layout: Callable[[se2.Layout], Feeds] | None = None, *,
          sync: bool = True, hold: bool = False, size: int | None = None) -> Staged:
    """Encode `src` with a fresh secret: the container to `container_path` (atomically,
    fsynced), the replica or the n erasure shards (padded, fsynced) into `stage_dir`.

    `on_layout`, if given, is called once the sizes are known and before any byte is
    written; the Taps it returns (by staged file name) are fed as the files grow, and a
    staged file given Pipes instead is not written at all: its bytes go to them.

    With sync=False nothing is fsynced: the caller syncs a whole batch at once
    (`Staged.durable`, then `fsutil.sync_batch`) before it records any of it; the
    container is then written in place (nothing refers to it before that record).

    With hold=True (and sync=False) nothing is written at all: the public fragments'
    padded bytes are returned in `Staged.held`, the container in `Staged.container`
    (for the caller's transaction to keep), and `stage_dir` is not used.

    `size`: the length of `src` if it is no file (a small record read whole)."""
    cfg, pol = v.cfg, v.cfg.public
    if size is None:
        size = os.fstat(src.fileno()).st_size
    hl = head_len(src.read(PROBE), size, cfg.dicom_header)
    src.seek(0)
    alg = cfg.digest
    # compression (if it pays) runs first, so the sizes are known before any byte is written
    prep = codec.prepare(src, size, head_len=hl, compression=cfg.compression, digest_alg=alg,
                         spool_dir=stage_dir.parent if hold else stage_dir, progress=progress)
    layout = prep.layout
    names = ["puf"] if pol.mode == "replicate" else [f"shard-{i}" for i in range(pol.n)]
    outs: list[HashingWriter] = []
    try:
        feeds = on_layout(layout) if on_layout else {}
        for name in names:
            feed = feeds.get(name)
            outs.append(HashingWriter(io.BytesIO(), alg) if hold
                        else PipeWriter(feed, alg) if isinstance(feed, list)
                        else HashingWriter(open(stage_dir / name, "w+b"), alg, feed))
        sink = outs[0] if pol.mode == "replicate" else ShardWriter(pol.k, pol.n, outs,
                                                                   DEFAULT_BLOCK)
        kept = io.BytesIO() if hold else None
        with (contextlib.nullcontext(kept) if kept is not None else atomic_output(container_path)
              if sync else _in_place(container_path)) as prf_file:
            prf_feed = feeds.get("prf")  # private: always staged (it is kept), so a Tap
            prf = HashingWriter(prf_file, alg, prf_feed if isinstance(prf_feed, Tap) else None)
            enc = codec.write(prep, v.key, sink, prf)
        if pol.mode == "erasure":
            sink.close()
        for o in outs:
            o.pad_random(padded(o.n, pol.pad))
            if sync:
                o.sync()
        held = {name: o.f.getvalue() for name, o in zip(names, outs)} if hold else None
    finally:
        prep.close()
        for o in outs:
            o.close()
    if sync:
        fsync_dir(stage_dir)
    if (enc.puf_len, enc.prf_len) != (layout.puf_len, layout.prf_len):
        raise IntegrityError("the encoder wrote other sizes than its layout says")
    writers = {**dict(zip(names, outs)), "prf": prf}
    for w in writers.values():
        if w.tap:
            w.tap.finish()
    return Staged(layout, size, alg, enc.digest,
                  {**{name: stage_dir / name for name in names}, "prf": container_path},
                  {name: w.hexdigest() for name, w in writers.items()}, held,
                  kept.getvalue() if kept is not None else None)


@contextlib.contextmanager
def _in_place(path: Path) -> Iterator[BinaryIO]:
    """A new private file written under its final name, unsynced (a batch's barrier
    syncs it): one create instead of a temporary file and a rename. Only for a file that
    nothing refers to until the barrier is through (a claimed file's container). Built
    in memory (a batch's files are small) and written in one call: a buffered file cost
    seven system calls more, each one a GIL hand-off under load. A failure leaves none."""
    buf = io.BytesIO()
    try:
        yield buf
        write_new(path, buf.getbuffer())
    except BaseException:
        path.unlink(missing_ok=True)  # a partial write, or what a crash left before
        raise


EARLY_UPLOAD_MIN = 16 << 20  # below this a file goes up in one request, which cannot start early

#: Files below this size are encoded in batches (`protect.encode_many`): one durability
#: barrier and one transaction for the batch. Above it the per-file costs (~1 ms of
#: fsyncs, a transaction, a thread hand-off) are small next to the encode itself.
BATCH_FILE_MAX = 1 << 20
#: Bounds of one batch: files, and bytes of originals (it is all uploaded after the last
#: one is encoded, so a batch is kept to a few tens of milliseconds of encoding).
BATCH_FILES = 64
BATCH_BYTES = 8 << 20


def batches(sizes: Iterable[tuple[str, int]], files: int = BATCH_FILES,
            size: int = BATCH_BYTES, small: int = BATCH_FILE_MAX
            ) -> Iterator[list[tuple[str, int]]]:
    """(file_id, size) pairs in arrival order, cut into what is encoded together: each
    run of files below `small` in batches of at most `files` files and `size` bytes,
    every other file alone. Lazy: a caller that must stop takes no more than it uses."""
    batch: list[tuple[str, int]] = []
    held = 0
    for fid, n in sizes:
        if n >= small or (batch and (len(batch) >= files or held + n > size)):
            if batch:
                yield batch
            batch, held = [], 0
            if n >= small:
                yield [(fid, n)]
                continue
        batch.append((fid, n))
        held += n
    if batch:
        yield batch


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

    def __init__(self, v: Archive, fid: str, early: EarlyUploads) -> None:
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


def abandon_planned(v: Archive, fid: str | None = None) -> int:
    """Names planned for early uploads of an encode that never finished (of `fid`, or
    of every file): to the trash, whether or not their objects exist. For every file
    (at start-up, nothing else running) the packs a killed process was building or
    sending are also removed from the staging area: their names are among those."""
    if fid is None:
        remove_staged_packs(v)
    return v.db.abandon_planned(fid)


