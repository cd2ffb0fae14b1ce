"""verify and repair with pack objects (docs/FORMAT.md §8.5), in process against in-memory
stores: one request per pack for a shallow verify, the damaged member named by a deep one,
a lost or altered pack rewritten for its own store, and no tampered member ever restored."""
from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import pytest

from backends.memory import MemoryStore
from dispersiond.errors import DispersiondError, WrongKey
from dispersiond.ops.finalize import finish
from dispersiond.ops.pack_checks import PackVerdicts, judge
from dispersiond.ops.packing import send_objects
from dispersiond.ops.protect import admit, commit_many, encode
from dispersiond.ops.repair import repair
from dispersiond.ops.restore import restore
from dispersiond.ops.verify import verify
from dispersiond.pack import PackIndex, PackMember, PackReader, layout as pack_layout
from dispersiond.state import FileState, ObjectRow
from dsp import real_files
from memory_archive import memory_archive


class CountingStore(MemoryStore):
    """A memory store that counts every request by verb and object name."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.calls: Counter = Counter()

    def stat(self, key):
        self.calls["stat", key] += 1
        return super().stat(key)

    def get(self, key, start=0, length=None):
        self.calls["get", key] += 1
        return super().get(key, start, length)


def counting(v) -> dict[str, CountingStore]:
    stores = {}
    for sc in v.cfg.stores:
        stores[sc.name] = CountingStore(sc.name, checksums=("sha256",))
        v.attach_store(sc.name, stores[sc.name])
    return stores


def protect_together(v, paths: list[Path]) -> list[str]:
    """Encode several files, then send all their objects in one go: each store gets one
    pack holding every file's small member (what a batching put or the daemon does)."""
    fids = [admit(v, p) for p in paths]
    for fid in fids:
        encode(v, fid)
    pending = [o for fid in fids for o in v.db.objects(fid, states=("pending",))]
    assert send_objects(v, pending) == []
    commit_many(v, [v.db.file(fid) for fid in fids])
    finish(v, fids)
    assert {v.db.file(fid).state for fid in fids} == {FileState.DONE}
    return fids


def small_files() -> list[Path]:
    return [real_files()[i] for i in (1, 3, 4, 5)]  # 10 KB, 2.5 KB, 0.5 KB, 19 KB


def restored(v, fid: str, out: Path) -> bytes:
    out.mkdir(exist_ok=True)
    f = restore(v, fid, out, force=True)
    return (out / f.name).read_bytes()


def member(v, fid: str, store: str) -> ObjectRow:
    (obj,) = [o for o in v.db.objects(fid) if o.store == store]
    assert obj.packed
    return obj


def flip(v, store: str, name: str, at: int) -> None:
    """Change one byte of a stored object in place (same name, same size)."""
    st = v.store(store)
    data = bytearray(st.get_bytes(name))
    data[at] ^= 0x20
    st.delete(name)
    st.put(name, io.BytesIO(bytes(data)), len(data))


# ------------------------------------------------------------------ shallow

def test_shallow_verify_makes_one_request_per_pack(tmp_path):
    # 16 KiB threshold: the two larger files keep objects of their own, the others pack
    with memory_archive(tmp_path, pack={"threshold": "16KiB"}, compression="off") as v:
        stores = counting(v)
        fids = protect_together(v, small_files() + [real_files()[0]])
        objs = [o for fid in fids for o in v.db.objects(fid)]
        packs = {(o.store, o.name) for o in objs if o.packed}
        alone = {(o.store, o.name) for o in objs if not o.packed}
        assert len(packs) == 4 and alone  # one pack per store, and some standalone objects
        assert all(sum(o.packed and (o.store, o.name) == p for o in objs) >= 2 for p in packs)
        for st in stores.values():
            st.calls.clear()
        rep = verify(v)
        assert rep.findings == [] and rep.ok == rep.objects == len(objs)
        calls = Counter()
        for name, st in stores.items():
            calls.update({(name, verb, key): n for (verb, key), n in st.calls.items()})
        assert calls == Counter({(s, "stat", n): 1 for s, n in packs | alone})
        # the daemon verifies in chunks of files: one pack's members in two chunks, one stat
        for st in stores.values():
            st.calls.clear()
        seen: PackVerdicts = {}
        for chunk in (fids[:2], fids[2:]):
            assert verify(v, files=chunk, packs=seen).findings == []
        assert all(st.calls[verb, key] == 1 for st in stores.values()
                   for verb, key in st.calls) and \
            sum(sum(st.calls.values()) for st in stores.values()) == len(packs | alone)


def test_a_lost_pack_marks_every_member_missing(tmp_path):
    with memory_archive(tmp_path) as v:
        fids = protect_together(v, small_files())
        lost = member(v, fids[0], "cloud-b")
        v.store("cloud-b").delete(lost.name)
        rep = verify(v)
        assert sorted((p.file_id, p.store, p.shard, p.problem) for p in rep.findings) == \
            sorted((fid, "cloud-b", 1, "missing") for fid in fids)
        assert rep.unrestorable == []  # 2 of 3 shards remain
        assert {o.state for o in v.db.pack_members("cloud-b", lost.name)} == {"missing"}
        assert v.db.pack("cloud-b", lost.name).state == "missing"


def test_shallow_verify_with_the_stores_hash_sees_a_changed_pack(tmp_path):
    # sha256 digests: the memory store's own SHA-256 of the whole pack proves it or not
    with memory_archive(tmp_path, digest="sha256") as v:
        fids = protect_together(v, small_files())
        m = member(v, fids[2], "cloud-a")
        flip(v, "cloud-a", m.name, m.offset + m.length // 2)
        rep = verify(v)
        assert sorted((p.file_id, p.problem) for p in rep.findings) == \
            sorted((fid, "checksum-mismatch") for fid in fids)
        assert {p.store for p in rep.findings} == {"cloud-a"}


# ------------------------------------------------------------------ deep

def test_deep_verify_names_exactly_the_damaged_member(tmp_path):
    with memory_archive(tmp_path, "replicate") as v:
        fids = protect_together(v, small_files())
        victim = member(v, fids[1], "cloud-b")
        flip(v, "cloud-b", victim.name, victim.offset + victim.length // 2)
        assert verify(v).findings == []  # same size, no hash of the same kind: a stat cannot tell
        rep = verify(v, deep=True)
        assert [(p.file_id, p.store, p.object, p.role, p.problem) for p in rep.findings] == [
            (fids[1], "cloud-b", victim.name, "public", "corrupt")]
        assert f"{victim.offset}+{victim.length}" in rep.findings[0].detail
        states = {o.file_id: o.state for o in v.db.pack_members("cloud-b", victim.name)}
        assert states == {fid: "corrupt" if fid == fids[1] else "uploaded" for fid in fids}
        # a shallow verify keeps what the digest check found (a stat cannot clear it)
        assert [(p.file_id, p.problem) for p in verify(v).findings] == [(fids[1], "corrupt")]


@pytest.mark.parametrize("where", ["index", "padding"])
def test_deep_verify_of_a_pack_damaged_outside_its_members(tmp_path, where):
    with memory_archive(tmp_path, "replicate") as v:
        fids = protect_together(v, small_files())
        m = member(v, fids[0], "cloud-a")
        pack = v.db.pack("cloud-a", m.name)
        index_at = pack.size - pack_layout.FOOTER_LEN - pack_layout.index_len(pack.members)
        assert index_at > pack.body_len  # padmé left a gap between body and index
        flip(v, "cloud-a", m.name, index_at + 20 if where == "index" else pack.body_len)
        rep = verify(v, deep=True)
        assert sorted((p.file_id, p.store, p.problem) for p in rep.findings) == \
            sorted((fid, "cloud-a", "pack-damaged") for fid in fids)
        if where == "index":
            assert all("failed authentication" in p.detail for p in rep.findings)
        else:
            assert all("outside its members" in p.detail for p in rep.findings)
        assert rep.unrestorable == []  # the members themselves are intact
        assert repair(v).failed == []
        assert verify(v, deep=True).findings == []
        assert m.name not in set(v.store("cloud-a").list())


def test_judge_blames_only_members_whose_bytes_fail():
    rows = [ObjectRow(i, f"{i:032x}", "public", None, "s", "p", off, 10, 100, f"{i:064x}",
                      "uploaded", None, "blake3", "d") for i, off in ((1, 0), (2, 10))]
    entries = tuple(PackMember(bytes.fromhex(r.file_id), r.offset, r.length, r.digest)
                    for r in rows)
    index = PackIndex("p", 100, "public", "blake3", 20, entries)

    def problems(*args) -> dict:
        return {i: vd and vd.problem for i, vd in judge(rows, *args).items()}

    assert problems(index, "", set(), True) == {1: None, 2: None}
    assert problems(index, "", {2}, False) == {1: None, 2: "corrupt"}  # only the bad one
    assert problems(None, "index broken", {2}, False) == {1: "pack-damaged", 2: "corrupt"}
    assert problems(index, "", set(), False) == {1: "pack-damaged", 2: "pack-damaged"}
    moved = PackIndex("p", 100, "public", "blake3", 20, (entries[0], PackMember(
        entries[1].ref, 10, 10, "0" * 64)))  # the index disagrees with the state
    assert problems(moved, "", set(), True) == {1: None, 2: "pack-damaged"}


# ------------------------------------------------------------------ repair

@pytest.mark.parametrize("mode", ["erasure", "replicate"])
def test_repair_of_a_deleted_pack_rebuilds_its_members_into_one_new_pack(tmp_path, mode):
    files = small_files()
    with memory_archive(tmp_path, mode) as v:
        fids = protect_together(v, files)
        old = member(v, fids[0], "cloud-b")
        other_stores_packs = {s: v.store(s).get_bytes(member(v, fids[0], s).name)
                              for s in ("cloud-a", "cloud-c")[:2 if mode == "erasure" else 1]}
        v.store("cloud-b").delete(old.name)
        rep = repair(v)
        assert rep.failed == [] and sorted(r["file_id"] for r in rep.repaired) == sorted(fids)
        assert [(p["store"], p["members"], p["rebuilt"]) for p in rep.repacked] == [
            ("cloud-b", len(fids), len(fids))]
        new = {member(v, fid, "cloud-b").name for fid in fids}
        assert len(new) == 1 and old.name not in new  # one new pack, under a new name
        (name,) = new
        assert set(v.store("cloud-b").list()) == {name}
        assert v.db.pack("cloud-b", old.name) is None and v.db.pack("cloud-b", name).members == 4
        data = v.store("cloud-b").get_bytes(name)
        assert data not in other_stores_packs.values()  # re-packed, not copied
        reader = PackReader(v.key, name, data, len(data))
        assert {m.ref.hex() for m in reader.index.members} == set(fids)
        assert reader.verify() == []
        assert verify(v, deep=True).findings == []
        # the rebuilt pack is really used: without another store's pack, every file restores
        gone = "cloud-a"
        v.store(gone).delete(member(v, fids[0], gone).name)
        for fid, src in zip(fids, files):
            assert restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_repair_of_a_deleted_private_pack_uses_the_local_containers(tmp_path):
    files = small_files()
    with memory_archive(tmp_path) as v:
        fids = protect_together(v, files)
        old = member(v, fids[0], "vault")
        v.store("vault").delete(old.name)
        rep = repair(v)
        assert rep.failed == [] and [(p["store"], p["kind"], p["members"])
                                     for p in rep.repacked] == [("vault", "private", 4)]
        (name,) = {member(v, fid, "vault").name for fid in fids}
        assert name != old.name and old.name not in set(v.store("vault").list())
        for fid in fids:  # the device's own copies gone: only the rebuilt pack is left
            v.drop_container(fid)
        for fid, src in zip(fids, files):
            assert restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_repair_of_one_altered_member_rewrites_its_pack(tmp_path):
    files = small_files()
    with memory_archive(tmp_path) as v:
        fids = protect_together(v, files)
        victim = member(v, fids[3], "cloud-c")
        flip(v, "cloud-c", victim.name, victim.offset)
        rep = repair(v, deep=True)
        assert rep.failed == [] and [(r["file_id"], r["store"], r["shard"])
                                     for r in rep.repaired] == [(fids[3], "cloud-c", 2)]
        assert [(p["store"], p["members"], p["rebuilt"]) for p in rep.repacked] == [
            ("cloud-c", 4, 1)]  # the three intact members copied along, the altered one rebuilt
        (name,) = {member(v, fid, "cloud-c").name for fid in fids}
        assert set(v.store("cloud-c").list()) == {name} and name != victim.name
        assert verify(v, deep=True).findings == []
        v.store("cloud-a").delete(member(v, fids[0], "cloud-a").name)  # cloud-c's now needed
        for fid, src in zip(fids, files):
            assert restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_repair_keeps_a_pack_that_still_holds_an_unrepaired_member(tmp_path):
    # replicate over two stores, both packs lost: nothing to rebuild from, nothing released
    with memory_archive(tmp_path, "replicate") as v:
        fids = protect_together(v, small_files()[:2])
        names = {s: member(v, fids[0], s).name for s in ("cloud-a", "cloud-b")}
        for s, n in names.items():
            v.store(s).delete(n)
        rep = repair(v)
        assert rep.repaired == [] and rep.repacked == []
        assert sorted((r["file_id"], r["store"]) for r in rep.failed) == sorted(
            (fid, s) for fid in fids for s in names)
        assert all(member(v, fid, s).name == n for fid in fids for s, n in names.items())
        assert v.db.trashed() == []


# ------------------------------------------------------------------ restore and keys

def test_a_tampered_member_is_never_returned_by_restore(tmp_path):
    files = small_files()[:2]
    with memory_archive(tmp_path, "replicate") as v:
        fids = protect_together(v, files)
        victims = [member(v, fids[0], s) for s in ("cloud-a", "cloud-b")]
        for m in victims:
            flip(v, m.store, m.name, m.offset + 7)
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(DispersiondError, match="digest"):
            restore(v, fids[0], out)
        assert list(out.iterdir()) == []  # nothing written, not even a partial file
        assert restored(v, fids[1], out) == files[1].read_bytes()  # its pack-mate is fine
        assert {member(v, fids[0], s).state for s in ("cloud-a", "cloud-b")} == {"corrupt"}
        flip(v, victims[0].store, victims[0].name, victims[0].offset + 7)  # one copy put back
        assert restored(v, fids[0], out) == files[0].read_bytes()
        rep = repair(v, deep=True)
        assert rep.failed == [] and [(r["file_id"], r["store"]) for r in rep.repaired] == [
            (fids[0], "cloud-b")]
        v.store("cloud-a").delete(member(v, fids[0], "cloud-a").name)  # only the rebuilt one
        for fid, src in zip(fids, files):
            assert restored(v, fid, out) == src.read_bytes()


def test_verify_and_restore_refuse_another_master_key_without_marking_anything(tmp_path):
    with memory_archive(tmp_path) as v:
        fids = protect_together(v, small_files()[:2])
        v.key = os.urandom(32)
        for run in (lambda: verify(v, deep=True), lambda: repair(v, deep=True),
                    lambda: restore(v, fids[0], tmp_path)):
            with pytest.raises(WrongKey, match="different master key"):
                run()
        assert {o.state for fid in fids for o in v.db.objects(fid)} == {"uploaded"}
