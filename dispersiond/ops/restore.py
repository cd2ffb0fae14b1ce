"""The `restore` operation: fetching and checking fragments, rebuilding a file bit-exact.

Every object is checked against its digest before use; a bad or missing copy is
skipped and the next copy (or shard) is tried. One k-of-n restorer
(`rebuild_public`) serves every `ObjectSource`: the configured stores (restore,
repair, rekey) and the links of a share bundle (open-share). The output is written
to a temporary file and renamed into place only after the codec's own
authentication and the original's digest both passed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, ContextManager, Iterable, Iterator, Protocol, Union

from backends import NotFound, StoreError, Unavailable

from .. import scratch
from .. import audit, codec, digests
from ..errors import CodecError, DispersiondError, FormatError, IntegrityError, WrongKey
from ..keys import key_id
from ..fsutil import atomic_output, fsync_dir, write_new
from ..layout import Layout
from ..logs import event
from ..pack import covering_range, extract
from ..placement import HashingWriter, decode_shards
from ..state import PROTECTED, FileRow, ObjectRow
from ..archive import Progress, Archive
from ..display import shown
from ..units import parse_duration
from .packread import PackWindows, fetch_range
from .streaming import ObjectStream
from .writebehind import WriteBehind


class Unrestorable(DispersiondError):
    """Not enough intact copies could be fetched."""


class ShardsDoNotFit(IntegrityError):
    """Intact shards that still do not rebuild the fragment the sizes describe."""


# --------------------------------------------------------------- one restorer

#: Where fetched bytes are kept: a file in the restore's temporary folder, or (no folder:
#: `tmp` is None) memory, for the small files of a bulk restore, where creating, renaming
#: and removing a few files and a folder per record cost more than everything else.
Blob = Union[Path, io.BytesIO]


def _blob(tmp: Path | None, name: str) -> Blob:
    return io.BytesIO() if tmp is None else tmp / name


def _reading(b: Blob | BinaryIO) -> ContextManager[BinaryIO]:
    """A reader of `b` from its start (a stream is read as it is, once)."""
    if isinstance(b, Path):
        return open(b, "rb")
    if isinstance(b, io.BytesIO):
        return io.BytesIO(b.getbuffer())
    return contextlib.nullcontext(b)


def _writing(b: Blob) -> ContextManager[BinaryIO]:
    return open(b, "wb") if isinstance(b, Path) else contextlib.nullcontext(b)

@dataclass(frozen=True)
class Piece:
    """One public object a source can fetch: where the fragment lies inside it."""

    shard: int | None
    offset: int
    length: int
    handle: Any  # the source's own reference (an object row, a link)


@dataclass(frozen=True)
class Known:
    """What a bulk restore read once for all its files: each file's objects and the
    stores failing at the start (one failing later is still seen through `v.down`).
    Spares every file the same queries on the one state connection, where the workers
    would queue behind each other."""

    objects: dict[str, list[ObjectRow]]
    failing: set[str]

    def of(self, f: FileRow, role: str) -> list[ObjectRow]:
        return [o for o in self.objects.get(f.file_id, ()) if o.role == role]


class ObjectSource(Protocol):
    """Somewhere public objects come from, each checked for its digest as it arrives."""

    def pieces(self) -> list[Piece]:
        """Every object of the fragment, best first."""

    def fetch(self, piece: Piece, dest: Blob) -> bool:
        """Download `piece` intact into `dest`; False (reason kept by the source) if not."""


def gather(source: ObjectSource, need: int, tmp: Path | None,
           exclude: int | None = None) -> dict[int, tuple[Blob, Piece]]:
    """Intact objects (shard number, or copy number for replicas) until `need` are had."""
    good: dict[int, tuple[Blob, Piece]] = {}
    for i, piece in enumerate(source.pieces()):
        if len(good) == need:
            break
        key = piece.shard if piece.shard is not None else i
        if key == exclude or key in good:
            continue
        dest = _blob(tmp, f"obj-{i}")
        if source.fetch(piece, dest):
            good[key] = (dest, piece)
    return good


def _extract(got: Blob, piece: Piece, tmp: Path | None, name: str) -> Blob:
    """The fragment bytes [offset, offset + length) of a downloaded object (drops padding)."""
    if isinstance(got, io.BytesIO):
        data = got.getbuffer()[piece.offset:piece.offset + piece.length]
        if len(data) < piece.length:
            raise ShardsDoNotFit("an object is shorter than the fragment it should hold")
        return got if len(data) == len(got.getbuffer()) else io.BytesIO(data)
    dest = tmp / name
    if piece.offset == 0:
        os.replace(got, dest)
        os.truncate(dest, piece.length)
        return dest
    with open(got, "rb") as src, open(dest, "wb") as fo:
        src.seek(piece.offset)
        left = piece.length
        while left:
            block = src.read(min(left, 1 << 20))
            if not block:
                raise ShardsDoNotFit("an object is shorter than the fragment it should hold")
            fo.write(block)
            left -= len(block)
    return dest


def rebuild_public(source: ObjectSource, layout: Layout,
                   tmp: Path | None) -> tuple[Blob, int] | int:
    """The verified public fragment as (file, or memory with no `tmp`; objects used), or
    the number of intact objects found when fewer than needed were (the caller says why,
    in its own terms)."""
    good = gather(source, layout.need, tmp)
    if len(good) < layout.need:
        return len(good)
    if layout.mode != "erasure":
        got, piece = next(iter(good.values()))
        return _extract(got, piece, tmp, "puf"), len(good)
    out = _blob(tmp, "puf")
    readers = {}
    try:
        for shard, (got, piece) in good.items():
            readers[shard] = _reading(_extract(got, piece, tmp, f"shard-{shard}"))
        with _writing(out) as fo:
            try:
                decode_shards(layout.puf_len, layout.k, layout.n, layout.block, readers, fo)
            except ValueError as exc:
                raise ShardsDoNotFit(f"the shards do not fit the recorded sizes ({exc})") from None
    finally:
        for r in readers.values():
            r.close()
    return out, len(good)


class StoreSource:
    """A file's public objects on the configured stores, failing stores tried last."""

    def __init__(self, v: Archive, f: FileRow, errors: list[str], progress: Progress | None = None,
                 states: tuple[str, ...] | None = None,
                 windows: PackWindows | None = None, known: Known | None = None) -> None:
        self.v, self.f, self.errors, self.progress, self.states = v, f, errors, progress, states
        self.windows, self.known = windows, known

    def pieces(self) -> list[Piece]:
        if self.known is not None:
            objs, failing = self.known.of(self.f, "public"), self.known.failing
        else:
            objs = self.v.db.objects(self.f.file_id, role="public", states=self.states)
            failing = None
        return [Piece(o.shard, o.fragment_offset, o.length, o)
                for o in _order(self.v, objs, failing)]

    def fetch(self, piece: Piece, dest: Blob) -> bool:
        return _try_fetch(self.v, piece.handle, dest, self.errors, self.progress, self.windows)


def layout_of(f: FileRow) -> Layout:
    return Layout.of_row(f)


def fetch_object(v: Archive, obj: ObjectRow, dest: BinaryIO,
                 progress: Progress | None = None, windows: PackWindows | None = None) -> None:
    """Download one object into `dest`, checking size and digest; marks the object's state.
    A packed member is read with one ranged GET of the blocks that cover it (or from the
    span of its pack a bulk restore fetched for many members), unmasked and checked
    against its own digest: `dest` gets exactly its bytes."""
    if obj.packed:
        _fetch_member(v, obj, dest, progress, windows)
        return
    w = HashingWriter(dest, obj.digest_alg)
    try:
        for chunk in v.store(obj.store).get(obj.name):
            w.write(chunk)
            if progress:
                progress(len(chunk))
    except NotFound:
        v.db.set_object_state(obj.id, "missing")
        raise
    if w.n != obj.object_size or w.hexdigest() != obj.digest:
        v.db.set_object_state(obj.id, "corrupt")
        event(logging.WARNING, "object failed its digest", file_id=obj.file_id, store=obj.store,
              object=obj.name)
        raise IntegrityError(f"store {obj.store!r}: object {obj.name} of file {obj.file_id} "
                             "does not match its digest (altered or damaged)")
    v.db.store_ok(obj.store)


def _fetch_member(v: Archive, obj: ObjectRow, dest: BinaryIO, progress: Progress | None,
                  windows: PackWindows | None) -> None:
    got = windows.window(obj) if windows is not None else None
    if got is None:
        start, n = covering_range(obj.offset, obj.length, obj.object_size)
        buf = io.BytesIO()
        if n:
            fetch_range(v, obj.store, obj.name, start, n, buf, progress)
        window = buf.getbuffer()
        got = start, lambda off, ln: window[off - start:off - start + ln]
    start, read = got
    try:
        data = extract(read, obj.offset, obj.length, master_key=v.key, name=obj.name,
                       digest=obj.digest, digest_alg=obj.digest_alg or "")
    except (IntegrityError, FormatError) as exc:
        v.db.set_object_state(obj.id, "corrupt")
        event(logging.WARNING, "packed member failed its digest", file_id=obj.file_id,
              store=obj.store, object=obj.name)
        raise IntegrityError(f"store {obj.store!r}: the member of file {obj.file_id} in pack "
                             f"{obj.name} does not match its digest (altered or damaged; "
                             f"{exc})") from None
    dest.write(data)
    v.db.store_ok(obj.store)


def _try_fetch(v: Archive, obj: ObjectRow, dest: Blob, errors: list[str],
               progress: Progress | None, windows: PackWindows | None = None) -> bool:
    def fetch() -> None:
        with _writing(dest) as f:
            fetch_object(v, obj, f, progress, windows)

    return _attempt(v, obj, errors, fetch)


def _attempt(v: Archive, obj: ObjectRow, errors: list[str], use: Callable[[], None]) -> bool:
    """Run `use` (a fetch of `obj`, or a decode from it as it downloads); False, with the
    reason in `errors` and the store's failure recorded, if the copy was not intact."""
    try:
        use()
        return True
    except NotFound:
        errors.append(f"{obj.store}: missing")
    except IntegrityError as exc:
        errors.append(f"{obj.store}: {exc}")
    except StoreError as exc:
        errors.append(f"{obj.store}: {exc}")
        v.db.store_error(obj.store, str(exc))
        if isinstance(exc, Unavailable):
            v.down.add(obj.store)
    return False


def failing_stores(v: Archive) -> set[str]:
    """Stores that failed lately: in this run, or in the last few minutes with no success
    since."""
    recent = time.time() - 300
    return set(v.down) | {
        s["store"] for s in v.db.store_status()
        if s["error_at"] and s["error_at"] > recent and (s["last_ok"] or 0) < s["error_at"]}


def _order(v: Archive, objs: list[ObjectRow], failing: set[str] | None = None) -> list[ObjectRow]:
    """Copies believed good first; stores that failed lately (`failing`, as read before,
    and those down in this run; all read now if None) last, so a dead cloud costs no
    waiting while the others suffice."""
    failing = failing_stores(v) if failing is None else failing | v.down
    return sorted(objs, key=lambda o: (o.store in failing, o.state != "uploaded",
                                       o.shard if o.shard is not None else 0))


def first_intact(v: Archive, objs: list[ObjectRow], tmp: Path | None, label: str,
                 errors: list[str], progress: Progress | None = None,
                 windows: PackWindows | None = None) -> tuple[ObjectRow, Blob] | None:
    """The first of `objs` (best first) that downloads intact, as (object, local file, or
    memory with no `tmp`)."""
    for obj in _order(v, objs):
        dest = _blob(tmp, f"{label}-{obj.id}")
        if _try_fetch(v, obj, dest, errors, progress, windows):
            return obj, dest
    return None


def private_container(v: Archive, f: FileRow, tmp: Path | None,
                      progress: Progress | None = None,
                      windows: PackWindows | None = None) -> Blob:
    """The local container if intact, else a verified copy from a private store (in
    memory, the local one too, with no `tmp`; a file in `tmp` or the device's own)."""
    local = v.container_path(f.file_id)
    kept = v.db.container(f.file_id)  # a small file's (state/containers.py)
    if kept is None and tmp is None and local.exists():
        kept = local.read_bytes()  # wanted in memory: checked as the kept bytes are
    if kept is not None or local.exists():
        if kept is None:  # a larger file's, checked as a stream and used where it is
            if digests.of_path(f.digest_alg, local) == f.container_digest:
                return local
        elif digests.of(f.digest_alg, kept) == f.container_digest:
            if tmp is None:
                return io.BytesIO(kept)
            write_new(path := tmp / f"{f.file_id}.prf", kept)  # a scratch copy
            return path
        event(logging.WARNING, "local private container damaged; using a backup",
              file_id=f.file_id)
    errors: list[str] = []
    got = first_intact(v, v.db.objects(f.file_id, role="private"), tmp, "prf", errors, progress,
                       windows)
    if got:
        return got[1]
    raise Unrestorable(f"file {f.file_id}: no intact private container ({'; '.join(errors) or 'none recorded'})")


def public_fragment(v: Archive, f: FileRow, tmp: Path | None,
                    progress: Progress | None = None, windows: PackWindows | None = None,
                    known: Known | None = None) -> Blob:
    """A verified public fragment (replica, or rebuilt from any k shards), in a file in
    `tmp` or, with no `tmp`, in memory."""
    errors: list[str] = []
    source = StoreSource(v, f, errors, progress, windows=windows, known=known)
    got = rebuild_public(source, layout_of(f), tmp)
    if isinstance(got, tuple):
        return got[0]
    if f.public_mode != "erasure":
        raise _no_replica(f, errors)
    raise Unrestorable(f"file {f.file_id}: only {got} of the {f.k} shards needed are "
                       f"intact ({'; '.join(errors)})")


def _no_replica(f: FileRow, errors: list[str]) -> Unrestorable:
    return Unrestorable(f"file {f.file_id}: no intact public replica ({'; '.join(errors)})")


def _stream_replica(v: Archive, f: FileRow, container: Callable[[], Blob], dest: Path, *,
                    force: bool, sync_dir: bool, progress: Progress | None) -> None:
    """A large replicated file decoded into `dest` while its public object downloads, no
    copy of the object on disk (`ObjectStream`); each copy in turn, best first. The
    download starts before the private container is checked (`container`, called once):
    its first bytes arrive meanwhile."""
    errors: list[str] = []
    for obj in _order(v, v.db.objects(f.file_id, role="public")):
        def use(obj: ObjectRow = obj) -> None:
            stream = ObjectStream(lambda sink: fetch_object(v, obj, sink, progress))
            try:
                prf = container()
                with atomic_output(dest, overwrite=force, sync_dir=sync_dir, writeback=True) as out:
                    try:
                        stream.skip(obj.fragment_offset)
                        decode_to(v, f, stream, prf, out)
                    except CodecError:
                        stream.drain()  # the object's own failure comes first, if it has one
                        raise
                    stream.drain()  # the padding, then the object's size and digest verdict
            finally:
                stream.close()

        if _attempt(v, obj, errors, use):
            return
    raise _no_replica(f, errors)


#: How far each shard's download may run ahead of the rebuild (k of them at once).
SHARD_AHEAD = 4 << 20


def _stream_shards(v: Archive, f: FileRow, container: Callable[[], Blob], dest: Path, *,
                   force: bool, sync_dir: bool, progress: Progress | None) -> bool:
    """A large erasure-coded file decoded into `dest` while its k preferred shards download
    side by side, rebuilt into the public fragment stripe by stripe as they arrive (a
    thread), no copy of any on disk. False, `dest` untouched, when one of those shards
    is not intact: the caller then gathers intact shards one by one, the failed one
    already marked (missing, corrupt) and so tried last. Before `dest` is put in place
    every shard has passed its own size and digest check (its padding included), and
    the rebuilt bytes the codec's and the original's."""
    lay = layout_of(f)
    objs = preferred(v, v.db.objects(f.file_id, role="public"), lay.need)
    if len(objs) < lay.need or len({o.shard for o in objs}) < lay.need:
        return False
    shards: dict[int, ObjectStream] = {}
    puf: ObjectStream | None = None
    errors: list[str] = []

    def rebuild(sink: ObjectStream) -> None:
        for o in objs:
            shards[o.shard].skip(o.fragment_offset)
        try:
            decode_shards(lay.puf_len, lay.k, lay.n, lay.block, dict(shards), sink)
        except ValueError as exc:  # a shard ended early: its own verdict says why
            raise ShardsDoNotFit(f"the shards do not fit the recorded sizes ({exc})") from None

    def verdicts() -> bool:
        """Each shard read to its end: True if every one passed its size and digest."""
        return all(_attempt(v, o, errors, shards[o.shard].drain) for o in objs)

    try:
        for o in objs:
            shards[o.shard] = ObjectStream(
                lambda sink, o=o: fetch_object(v, o, sink, progress), cap=SHARD_AHEAD)
        puf = ObjectStream(rebuild, cap=SHARD_AHEAD)
        prf = container()
        with atomic_output(dest, overwrite=force, sync_dir=sync_dir, writeback=True) as out:
            try:
                decode_to(v, f, puf, prf, out)
                puf.drain()
            except (CodecError, StoreError):  # a shard's failure comes through the rebuild
                if verdicts():
                    raise  # intact shards that still do not decode: not a copy's fault
                raise _Fallback() from None
            if not verdicts():
                raise _Fallback()
    except _Fallback:
        event(logging.WARNING, "a shard failed while streaming; gathering others",
              file_id=f.file_id)
        return False
    finally:
        for stream in list(shards.values()) + ([puf] if puf is not None else []):
            stream.close()  # the shards first: a rebuild waiting on one ends at once
    return True


class _Fallback(Exception):
    """A shard of a streamed rebuild was not intact: rebuild from the shards one by one."""


def gather_shards(v: Archive, f: FileRow, tmp: Path, errors: list[str],
                  progress: Progress | None = None, exclude: int | None = None,
                  states: tuple[str, ...] | None = None) -> dict[int, Path]:
    """Download intact shards (shard number -> file) until k are had or none are left
    (of those in `states`, when given)."""
    good = gather(StoreSource(v, f, errors, progress, states), f.k, tmp, exclude)
    return {shard: path for shard, (path, _) in good.items()}


def decode_to(v: Archive, f: FileRow, puf: Blob | BinaryIO, prf: Blob, out: BinaryIO) -> None:
    """Decode into `out`, then check the original's digest."""
    w: HashingWriter | WriteBehind
    with contextlib.ExitStack() as stack:
        if f.size > IN_MEMORY_MAX:  # hashed and written while the next chunk decodes
            w = stack.enter_context(WriteBehind(out, f.digest_alg))
        else:
            w = HashingWriter(out, f.digest_alg)
        pu, pr = stack.enter_context(_reading(puf)), stack.enter_context(_reading(prf))
        codec.decode_stream(f.scheme, v.key, pu, f.puf_len, pr, f.container_len, w)
        if isinstance(w, WriteBehind):
            w.finish()
    if w.n != f.size or (f.digest and w.hexdigest() != f.digest):
        raise IntegrityError(f"file {f.file_id}: rebuilt bytes do not match the recorded "
                             "digest of the original")


_FILE_ID = re.compile(r"[0-9a-f]{32}")


def checked_id(f: FileRow) -> str:
    """The file id, refused unless 32 hex digits: it names paths in the state directory."""
    if not _FILE_ID.fullmatch(f.file_id or ""):
        raise DispersiondError(f"the state database holds a malformed file id {f.file_id!r}; "
                               "nothing was written (run 'dispersiond verify' and report it)")
    return f.file_id


def target_path(f: FileRow, dest: Path) -> Path:
    """Where `restore --to dest` writes: `dest` itself, or the file's name inside the folder
    `dest`, and that only if the recorded name is a bare name (never a path out of it)."""
    if not dest.is_dir():
        return dest
    name = f.name or ""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or Path(name).name != name):
        raise DispersiondError(f"file {f.file_id}: its recorded name {name[:80]!r} is not a "
                               "plain file name; nothing was written: give --to a file path")
    return dest / name


#: A file this small is restored in memory (no temporary folder or files): about three
#: times this at most per job in flight (the object as fetched, its fragment, the
#: container).
IN_MEMORY_MAX = 1 << 20


def _protected(f: FileRow) -> FileRow:
    checked_id(f)
    if f.state not in PROTECTED:
        raise DispersiondError(f"file {f.file_id} is not protected yet (state {f.state})")
    return f


@contextlib.contextmanager
def _scratch(v: Archive, f: FileRow) -> Iterator[Path | None]:
    """Where `f`'s fetched objects are kept: memory (None) for a small file, else a
    temporary folder in the work area, removed afterwards."""
    if f.size <= IN_MEMORY_MAX:
        yield None
        return
    with scratch.folder(v.root / "work", "restore") as tmpd:
        yield Path(tmpd)


def _rebuild(v: Archive, f: FileRow, dest: Path, tmp: Path | None, *, force: bool,
             progress: Progress | None = None, windows: PackWindows | None = None,
             known: Known | None = None, sync_dir: bool = True) -> None:
    """Fetch and check both fragments, decode, check the original's digest, and only then
    put the file at `dest` (fsynced, renamed; the folder fsynced unless `sync_dir` is
    False, when the caller does it once for many files). A large file is decoded as its
    public object (or its k preferred shards) downloads."""
    _same_key(v, f)
    held: list[Blob] = []

    def container() -> Blob:  # checked once, while the first download starts
        if not held:
            held.append(private_container(v, f, tmp, progress, windows))
        return held[0]

    if tmp is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.public_mode != "erasure":
            _stream_replica(v, f, container, dest, force=force, sync_dir=sync_dir,
                            progress=progress)
            return
        if _stream_shards(v, f, container, dest, force=force, sync_dir=sync_dir,
                          progress=progress):
            return
    prf = container()
    puf = public_fragment(v, f, tmp, progress, windows, known)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest, overwrite=force, sync_dir=sync_dir, writeback=True) as out:
        decode_to(v, f, puf, prf, out)


def _same_key(v: Archive, f: FileRow) -> None:
    """Refuse another master key before anything is fetched: a packed member's mask
    derives from the key, so under the wrong one every member would fail its digest and
    be marked corrupt, and the user would hear of damage instead of the key."""
    if f.key_id and f.key_id != (mine := key_id(v.key)):
        raise WrongKey(f"file {f.file_id} was protected with a different master key (key id "
                       f"{f.key_id}, yours {mine}): use the key it was made with")


def restore(v: Archive, ref: str, dest: Path, *, force: bool = False,
            progress: Progress | None = None) -> FileRow:
    """Rebuild one file at `dest` bit-exact; never writes unverified bytes over anything,
    nor anywhere but `dest` (a file, or a folder to restore into)."""
    f = _protected(v.resolve(ref))
    dest = target_path(f, dest)
    if dest.exists() and not force:
        raise DispersiondError(f"{dest} exists; choose another --to or pass --force")
    with _scratch(v, f) as tmp:
        _rebuild(v, f, dest, tmp, force=force, progress=progress)
    v.audit("restore", f.file_id)
    event(logging.INFO, "file restored", file_id=f.file_id)
    return f


# --------------------------------------------------------------- many files

@dataclass(frozen=True)
class BulkItem:
    """What became of one file of a bulk restore."""

    file: FileRow
    path: Path | None
    ok: bool
    error: str | None = None
    skipped: bool = False


@dataclass
class BulkReport:
    items: list[BulkItem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def restored(self) -> list[BulkItem]:
        return [i for i in self.items if i.ok]

    @property
    def failed(self) -> list[BulkItem]:
        return [i for i in self.items if not i.ok and not i.skipped]

    @property
    def skipped(self) -> list[BulkItem]:
        return [i for i in self.items if i.skipped]

    @property
    def bytes(self) -> int:
        return sum(i.file.size for i in self.restored)


def since_timestamp(text: str, now: float | None = None) -> float:
    """`--since`: an ISO date or time (local time unless it says otherwise), or a
    duration back from now such as `7d` or `12h`."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        pass
    try:
        back = parse_duration(text)
    except ValueError:
        raise DispersiondError(f"--since {text!r} is neither an ISO date (2026-11-30, "
                               "2026-11-30T08:00) nor a duration (7d, 12h, 30m)") from None
    return (time.time() if now is None else now) - back.total_seconds()


def matching(files: Iterable[FileRow], pattern: str | None) -> list[FileRow]:
    """Files whose real name matches the shell glob `pattern` (case-sensitive; all: None)."""
    return [f for f in files if pattern is None or fnmatch.fnmatchcase(f.name or "", pattern)]


def _suffixed(name: str, tag: str) -> str:
    p = Path(name)
    return f"{p.stem}.{tag}{p.suffix}" if p.stem else f"{name}.{tag}"


def _free_name(name: str, file_id: str, taken: set[str]) -> str:
    """`name`, or with the shortest id prefix (then a counter) that no other file took."""
    if name not in taken:
        return name
    for tag in (file_id[:8], file_id[:16], file_id):
        if (c := _suffixed(name, tag)) not in taken:
            return c
    n = 2
    while _suffixed(name, f"{file_id}-{n}") in taken:
        n += 1
    return _suffixed(name, f"{file_id}-{n}")


def plan_targets(files: list[FileRow], dest: Path) -> list[tuple[FileRow, Path | str]]:
    """Each file's path in the folder `dest` (its bare name; a later file of the same
    name gets its id prefix as a suffix, so no restored file overwrites another), or why
    it has none."""
    taken: set[str] = set()
    out: list[tuple[FileRow, Path | str]] = []
    for f in files:
        try:
            checked_id(f)
            path = target_path(f, dest)
        except DispersiondError as exc:
            out.append((f, str(exc)))
            continue
        name = _free_name(path.name, f.file_id, taken)
        taken.add(name)
        out.append((f, dest / name))
    return out


def _reason(exc: Exception) -> str:
    """One line saying what failed (no traceback): the message, or the OS error and path."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {shown(exc.filename)}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).replace("\n", " ")
    return text if isinstance(exc, (DispersiondError, StoreError)) else \
        f"{type(exc).__name__}: {text}"


def _in_the_way(f: FileRow, path: Path, force: bool) -> BulkItem | None:
    """The outcome of a file whose target is taken (a folder; a file, without force)."""
    if path.is_dir():
        return BulkItem(f, path, False, f"file {f.file_id}: a folder {shown(path)} is in the "
                        "way; move it or restore into another --to")
    if path.exists() and not force:
        return BulkItem(f, path, False, None, skipped=True)
    return None


def _restore_one(v: Archive, f: FileRow, path: Path, force: bool, windows: PackWindows,
                 known: Known, audits: "_AuditBatch") -> BulkItem:
    """`restore` of one file, its spans shared with the others, its audit entry batched."""
    try:
        taken = _in_the_way(f, path, force)
        if taken:
            return taken
        _protected(f)
        with _scratch(v, f) as tmp:
            _rebuild(v, f, path, tmp, force=force, windows=windows, known=known,
                     sync_dir=False)
        event(logging.INFO, "file restored", file_id=f.file_id)
    except Exception as exc:  # one file's failure never stops the others
        return BulkItem(f, path, False, _reason(exc))
    finally:
        windows.release(f.file_id)
    audits.add(f.file_id)
    return BulkItem(f, path, True)


def preferred(v: Archive, objs: list[ObjectRow], need: int = 1,
              failing: set[str] | None = None) -> list[ObjectRow]:
    """The objects a restore fetches first when every copy is good: the first `need`
    distinct shards (or copies) in `_order`, as `gather` and `first_intact` take them."""
    out: list[ObjectRow] = []
    seen: set[int] = set()
    for i, o in enumerate(_order(v, objs, failing)):
        key = o.shard if o.shard is not None else i
        if len(seen) < need and key not in seen:
            seen.add(key)
            out.append(o)
    return out


def first_choices(v: Archive, files: list[FileRow],
                  known: Known | None = None) -> list[ObjectRow]:
    """What each file's restore fetches first: its `need` preferred public objects, and a
    private one when the device lacks its own copy of the container. A bulk restore
    fetches each pack's share of them at once."""
    known = known or know(v, files)
    out: list[ObjectRow] = []
    for f in files:
        out += preferred(v, known.of(f, "public"), layout_of(f).need, known.failing)
        if not v.has_container(f.file_id):
            out += preferred(v, known.of(f, "private"), 1, known.failing)
    return out


def know(v: Archive, files: list[FileRow]) -> Known:
    return Known(v.db.objects_grouped(f.file_id for f in files), failing_stores(v))


class _AuditBatch:
    """The restore entries of a bulk restore, appended in batches (one transaction and one
    fsync per batch rather than per file; the rest at the end). Before each batch the
    folder the files were renamed into is fsynced: an entry never names a file whose
    name could still be lost."""

    SIZE = 64

    def __init__(self, v: Archive, folder: Path) -> None:
        self.v, self.folder, self.lock = v, folder, threading.Lock()
        self.ids: list[str] = []

    def add(self, file_id: str) -> None:
        with self.lock:
            self.ids.append(file_id)
            if len(self.ids) < self.SIZE:
                return
            batch, self.ids = self.ids, []
        self._write(batch)

    def flush(self) -> None:
        with self.lock:
            batch, self.ids = self.ids, []
        if batch:
            self._write(batch)

    def _write(self, batch: list[str]) -> None:
        fsync_dir(self.folder)
        audit.append_many(self.v.db, self.v.key, [("restore", fid, {}) for fid in batch])


def restore_many(v: Archive, files: list[FileRow], dest: Path, *, jobs: int = 4,
                 force: bool = False,
                 done: Callable[[BulkItem], None] | None = None) -> BulkReport:
    """Restore `files` into the folder `dest`, `jobs` at a time (the work is I/O bound),
    each verified exactly as `restore` does; a failure is recorded and the rest go on.
    Existing files are skipped unless `force`. `done` hears of each file as it ends."""
    if not dest.is_dir():
        raise DispersiondError(f"--to {shown(dest)} is not a folder; create it or give an "
                               "existing folder to restore into")
    start = time.monotonic()
    report = BulkReport()
    planned = plan_targets(files, dest)
    todo = [(f, t) for f, t in planned if isinstance(t, Path)]
    wanted = [f for f, t in todo if _in_the_way(f, t, force) is None]
    known = know(v, [f for f, _ in todo])
    windows = PackWindows(v, first_choices(v, wanted, known), v.root / "work")
    todo.sort(key=lambda ft: windows.rank(ft[0].file_id))  # the files of one span together
    audits = _AuditBatch(v, dest)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for f, target in planned:
                if isinstance(target, str):
                    item = BulkItem(f, None, False, target)
                    report.items.append(item)
                    if done:
                        done(item)
            futures = [pool.submit(_restore_one, v, f, target, force, windows, known, audits)
                       for f, target in todo]
            for fut in as_completed(futures):
                item = fut.result()
                report.items.append(item)
                if done:
                    done(item)
    finally:
        audits.flush()
        windows.close()
    order = {f.file_id: i for i, (f, _) in enumerate(planned)}
    report.items.sort(key=lambda i: order[i.file.file_id])
    report.seconds = time.monotonic() - start
    event(logging.INFO, "bulk restore finished", restored=len(report.restored),
          failed=len(report.failed), skipped=len(report.skipped))
    return report
