"""Small files' public fragments held in memory between their encode and their pack
(dispersiond/held.py, docs/FORMAT.md §8 "Crash safety"): nothing staged, containers wait
for their public fragments, a failed pack writes its held fragments out, and a process
that died with fragments held has those files encoded again at the next start. Real
SQLite, in-memory stores, real files."""
from __future__ import annotations

import os
from pathlib import Path

from dispersiond import digests
from dispersiond.archive import Archive
from dispersiond.held import Held
from dispersiond.ops import packing
from dispersiond.ops.held_recovery import encode_lost_again, lost_held
from dispersiond.ops.protect import admit, commit_many, encode_many
from dispersiond.ops.restore import restore
from dispersiond.state import FileState
from dsp import real_files
from memory_archive import every_object, memory_archive


def _pending(v: Archive, fids: list[str]):
    return [o for fid in fids for o in v.db.objects(fid, states=("pending",))]


def _restores(v: Archive, fids: list[str], paths: list[Path], out: Path) -> None:
    out.mkdir(exist_ok=True)
    for fid, p in zip(fids, paths):
        restore(v, fid, out / fid)
        assert (out / fid).read_bytes() == p.read_bytes()


def test_held_fragments_are_packed_from_memory_and_containers_go_after(tmp_path: Path) -> None:
    paths = real_files()[:4]
    with memory_archive(tmp_path, "erasure") as v:
        fids = [admit(v, p) for p in paths]
        assert encode_many(v, fids) == dict.fromkeys(fids)
        assert v.held.files() == set(fids)
        assert not any(v.work_dir(fid).exists() for fid in fids)  # nothing staged
        order: list[str] = []
        real = packing.send_pack

        def spy(v_, job, *args, **kwargs):
            if job.kind == "private":  # every public fragment of its files has landed
                assert not any(v.held.waiting(o.file_id) for o in job.objs)
            order.append(job.kind)
            return real(v_, job, *args, **kwargs)

        packing.send_pack = spy
        try:
            assert packing.send_objects(v, _pending(v, fids)) == []
        finally:
            packing.send_pack = real
        assert order[-1] == "private" and set(order[:-1]) == {"public"}
        assert v.held.files() == set() and v.held.used == 0  # landed: memory given back
        assert commit_many(v, list(v.db.files_by_id(fids).values())) == fids
        _restores(v, fids, paths, tmp_path / "out")


def test_a_failed_public_pack_writes_its_held_fragments_out(tmp_path: Path) -> None:
    paths = real_files()[:3]
    with memory_archive(tmp_path, "replicate") as v:
        fids = [admit(v, p) for p in paths]
        encode_many(v, fids)
        cloud = v.cfg.public.stores[0]
        v.store(cloud).down = True
        failures = packing.send_objects(v, _pending(v, fids))
        assert failures and {s for s, _ in failures} >= {cloud}
        assert v.held.files() == set()  # written out: durable, retried from disk
        for o in v.db.objects_of(fids, states=("pending",)):
            if o.role == "public":
                data = v.staged_path(o.file_id, o.role, o.shard).read_bytes()
                assert len(data) == o.object_size and digests.of(
                    o.digest_alg or "blake3", data) == o.digest
        # the containers were not held back for ever: they waited, then went up
        assert all(o.state == "uploaded" for o in v.db.objects_of(fids)
                   if o.role == "private")
        v.store(cloud).down = False
        assert packing.send_objects(v, _pending(v, fids)) == []
        assert commit_many(v, list(v.db.files_by_id(fids).values())) == fids
        _restores(v, fids, paths, tmp_path / "out")


def test_files_whose_held_fragments_died_are_encoded_again(tmp_path: Path) -> None:
    """The process died after the encode was recorded and after one of three clouds'
    public packs was committed: the next start (a new registry, nothing held) claims the
    files again, gives up the landed members (their pack goes to the trash), removes the
    containers, and a new encode protects every file."""
    paths = real_files()[:3]
    with memory_archive(tmp_path, "erasure") as v:
        fids = [admit(v, p) for p in paths]
        encode_many(v, fids)
        first = [o for o in _pending(v, fids) if o.store == v.cfg.public.stores[0]]
        (job,) = packing.plan_packs(first, v.cfg.pack.pack_size)
        row = packing.send_pack(v, job, packing.Throttle(None))
        old_containers = {fid: v.container(fid) for fid in fids}
        v.held = Held()  # ... and the process died: what it held is gone
        assert lost_held(v) == sorted(fids)
        assert encode_lost_again(v) == 3
        assert {f.state for f in v.db.files_by_id(fids).values()} == {FileState.CLAIMED}
        assert not v.db.objects_of(fids)
        assert not any(v.has_container(fid) for fid in fids)
        assert (row.store, row.name) in v.db.trashed() and v.db.pack(row.store, row.name) is None
        assert lost_held(v) == [] and encode_lost_again(v) == 0  # once only
        assert encode_many(v, fids) == dict.fromkeys(fids)
        assert packing.send_objects(v, _pending(v, fids)) == []
        assert commit_many(v, list(v.db.files_by_id(fids).values())) == fids
        for fid in fids:  # new keys: another container
            assert v.container(fid) != old_containers[fid]
        v.empty_trash()
        assert row.name not in every_object(v)[row.store]
        _restores(v, fids, paths, tmp_path / "out")


def test_files_past_the_memory_budget_are_staged_as_before(tmp_path: Path) -> None:
    paths = real_files()[:4]
    with memory_archive(tmp_path, "replicate") as v:
        v.held = Held(limit=int(os.path.getsize(paths[0]) * 1.2) + 8192)
        fids = [admit(v, p) for p in paths]
        assert encode_many(v, fids) == dict.fromkeys(fids)
        held = v.held.files()
        assert 1 <= len(held) < len(fids)  # the budget: some held, the rest staged
        for fid in set(fids) - held:
            assert (v.work_dir(fid) / "puf").exists()
        assert packing.send_objects(v, _pending(v, fids)) == []
        assert v.held.used == 0
        assert commit_many(v, list(v.db.files_by_id(fids).values())) == fids
        _restores(v, fids, paths, tmp_path / "out")


def test_a_store_that_fails_while_fragments_are_written_out_leaves_them_held(
        tmp_path: Path) -> None:
    h = Held()
    assert h.reserve(100)
    h.hold("a" * 32, {"puf": b"x" * 100}, {"cloud"}, 100)
    blocker = tmp_path / "work"
    blocker.write_bytes(b"")  # a file where the staging folder should be: the write fails
    try:
        h.spill(blocker, {"a" * 32})
    except OSError:
        pass
    else:
        raise AssertionError("the failed write was not reported")
    assert h.waiting("a" * 32) and h.part("a" * 32, "puf") == b"x" * 100
    h.landed("a" * 32, "cloud")
    assert not h.waiting("a" * 32) and h.used == 0
    assert not h.reserve(h.limit + 1)
