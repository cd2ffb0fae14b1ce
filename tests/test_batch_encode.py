"""`encode_many`, the batch encode of small files, on real local stores and a real state
database: one durability barrier and one transaction for the batch, one outcome per
file (a bad file does not stop the others), nothing recorded when the batch stops."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from dsp import local_config, real_files

from dispersiond import digests
from dispersiond.config import load_config
from dispersiond.archive import open_archive
from dispersiond.ops.encode import BATCH_FILE_MAX
from dispersiond.ops.packing import staged_name
from dispersiond.ops.protect import (Cancelled, SourceGone, admit, commit_many, encode,
                                     encode_many, upload)
from dispersiond.ops.restore import restore
from dispersiond.errors import DispersiondError
from dispersiond.state import FileState


def _records(folder: Path) -> list[Path]:
    """Small records of every awkward size, and real health-record formats."""
    folder.mkdir()
    out = []
    for i, size in enumerate([0, 1, 100, 4096, 16 << 10, 200_000]):
        p = folder / f"rec-{i}.bin"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out + [p for p in real_files() if p.stat().st_size < BATCH_FILE_MAX]


@contextmanager
def counting_tx(v):
    """Count the state database's write transactions (the real ones run)."""
    real, count = v.db.tx, [0]

    @contextmanager
    def counted():
        count[0] += 1
        with real() as conn:
            yield conn

    v.db.tx = counted
    try:
        yield count
    finally:
        v.db.tx = real


def _restores(v, fid: str, original: Path, out: Path) -> None:
    restore(v, fid, out)
    assert out.read_bytes() == original.read_bytes()


@pytest.mark.parametrize("held", [True, False], ids=["held", "staged"])
@pytest.mark.parametrize("mode", ["erasure", "replicate"])
def test_a_batch_is_made_durable_by_one_barrier_then_recorded_by_one_transaction(
        tmp_path: Path, monkeypatch, mode: str, held: bool) -> None:
    """Held (the default for small files): only the containers and their folder are
    synced, the public fragments are in memory; staged (no memory budget left): every
    staged file too, and each folder once."""
    cfg = load_config(local_config(tmp_path, mode))
    files = _records(tmp_path / "in")
    with open_archive(cfg, exclusive=True) as v:
        if not held:
            v.held.limit = 0
        fids = [admit(v, p) for p in files]
        synced: list[tuple[str, str]] = []  # (path, the file's state when it was synced)
        real_fsync = os.fsync

        def spy(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            owner = next((fid for fid in fids if fid in path), None)
            synced.append((path, v.db.file(owner).state if owner else "-"))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", spy)
        with counting_tx(v) as tx:
            outcomes = encode_many(v, fids)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert outcomes == dict.fromkeys(fids)  # every file encoded, in the order given
        assert tx[0] == 1  # one transaction for the batch
        staged = [] if held else [str(v.staged_path(o.file_id, o.role, o.shard))
                                  for o in v.db.objects()]
        paths = [p for p, _ in synced]
        # Each staged file and container once, each folder once: no fsync of a file's
        # folder per file (the batch's barrier), nothing synced twice. Held files write
        # nothing: their containers are in the batch's transaction.
        folders = (set() if held else {str(v.work_dir(fid)) for fid in fids}
                   | {str(v.root / "prf"), str(v.root / "work")})
        assert sorted(paths) == sorted(set(staged) | folders)
        assert held == (v.held.files() == set(fids))
        assert held == all(v.db.has_container(fid) and not v.container_path(fid).exists()
                           for fid in fids)
        assert held != any(v.work_dir(fid).exists() for fid in fids)
        assert len(paths) == len(set(paths))
        # The barrier came first: every file was still only claimed when it was synced.
        assert {state for _, state in synced} <= {FileState.CLAIMED.value, "-"}
        for fid, src in zip(fids, files):
            f = v.db.file(fid)
            assert f.state == FileState.ENCODED and f.size == src.stat().st_size
            for o in v.db.objects(fid):
                assert o.state == "pending"
                data = (v.held.part(fid, staged_name(o)) if held and o.role == "public"
                        else v.staged_path(fid, o.role, o.shard).read_bytes())
                assert len(data) == o.object_size and digests.of(
                    f.digest_alg, data) == o.digest
        for fid in fids:
            assert upload(v, fid) == []
        assert commit_many(v, list(v.db.files_by_id(fids).values())) == fids
        for fid, src in zip(fids, files):
            _restores(v, fid, src, tmp_path / "out" / fid)


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    cfg = load_config(local_config(tmp_path, "replicate"))
    files = _records(tmp_path / "in")[:5]
    gone, folder = tmp_path / "in" / "gone.bin", tmp_path / "in" / "now-a-folder.bin"
    gone.write_bytes(b"x" * 300)
    folder.write_bytes(b"y" * 300)
    with open_archive(cfg, exclusive=True) as v:
        fids = [admit(v, p) for p in files]
        done_before = admit(v, files[0])  # the same bytes, encoded on its own already
        encode(v, done_before)
        objects_before = v.db.objects(done_before)
        vanished, unreadable = admit(v, gone), admit(v, folder)
        gone.unlink()
        folder.unlink()
        folder.mkdir()  # opening it for reading fails: it cannot be read
        batch = [fids[0], vanished, fids[1], done_before, unreadable, *fids[2:], "f" * 32]
        with counting_tx(v) as tx:
            outcomes = encode_many(v, batch)
        assert tx[0] == 1
        assert list(outcomes) == batch
        assert isinstance(outcomes[vanished], SourceGone)
        assert isinstance(outcomes[unreadable], SourceGone)
        assert isinstance(outcomes[done_before], DispersiondError)
        assert "not waiting to be encoded" in str(outcomes[done_before])
        assert "no record" in str(outcomes["f" * 32])
        assert [fid for fid, exc in outcomes.items() if exc is None] == fids
        for fid in (vanished, unreadable):  # still claimed, and nothing of it left behind
            assert v.db.file(fid).state == FileState.CLAIMED and not v.db.objects(fid)
            assert not v.work_dir(fid).exists() and not v.has_container(fid)
        assert v.db.file(done_before).state == FileState.ENCODED  # untouched
        assert v.db.objects(done_before) == objects_before
        assert v.work_dir(done_before).exists()
        for fid, src in zip(fids, files):
            assert v.db.file(fid).state == FileState.ENCODED
            assert upload(v, fid) == []
        commit_many(v, list(v.db.files_by_id(fids).values()))
        for fid, src in zip(fids, files):
            _restores(v, fid, src, tmp_path / "out" / fid)


def test_a_stopped_batch_records_nothing_and_runs_again_from_scratch(tmp_path: Path) -> None:
    cfg = load_config(local_config(tmp_path, "erasure"))
    files = _records(tmp_path / "in")[:6]
    with open_archive(cfg, exclusive=True) as v:
        fids = [admit(v, p) for p in files]
        seen = []

        def check(_: int) -> None:
            seen.append(1)
            if len(seen) == 4:  # three files staged: the daemon is stopping
                raise Cancelled()

        with counting_tx(v) as tx, pytest.raises(Cancelled):
            encode_many(v, fids, check)
        assert tx[0] == 0
        assert {v.db.file(fid).state for fid in fids} == {FileState.CLAIMED}
        assert not v.db.objects()
        assert not any((v.root / "work").iterdir())  # the staged copies given back
        assert not any((v.root / "prf").iterdir())
        assert not any(v.has_container(fid) for fid in fids)
        assert encode_many(v, fids) == dict.fromkeys(fids)
        for fid, src in zip(fids, files):
            assert upload(v, fid) == []
        commit_many(v, list(v.db.files_by_id(fids).values()))
        for fid, src in zip(fids, files):
            _restores(v, fid, src, tmp_path / "out" / fid)


def test_a_failing_barrier_records_nothing(tmp_path: Path, monkeypatch) -> None:
    """A write-back error surfaces at the barrier's fsync: the batch is not recorded (its
    files would be encoded on the strength of bytes that may not be on the disk)."""
    import errno

    # nothing packed, so nothing held: staged files and containers the barrier syncs
    # (held files have nothing to sync: their containers are in the transaction)
    cfg = load_config(local_config(tmp_path, "replicate", pack={"threshold": 1}))
    files = _records(tmp_path / "in")[:4]
    with open_archive(cfg, exclusive=True) as v:
        fids = [admit(v, p) for p in files]
        real_fsync, calls = os.fsync, [0]

        def failing(fd: int) -> None:
            calls[0] += 1
            if calls[0] == 3:
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", failing)
        with pytest.raises(OSError, match="Input/output"):
            encode_many(v, fids)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert {v.db.file(fid).state for fid in fids} == {FileState.CLAIMED}
        assert not v.db.objects() and not any((v.root / "work").iterdir())
        assert encode_many(v, fids) == dict.fromkeys(fids)
