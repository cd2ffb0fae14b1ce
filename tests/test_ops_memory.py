"""The operations (dispersiond/ops/) against in-memory stores: protect, restore, verify,
repair, forget, rekey, rotate-key and the shared finish step, each end to end in
process. The subprocess and emulator tests elsewhere cover the same paths over real I/O."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from dispersiond import manifest
from dispersiond.errors import DispersiondError
from dispersiond.keys import key_id
from dispersiond.layout import Layout
from dispersiond.ops.finalize import finish
from dispersiond.ops.forget import forget
from dispersiond.ops.protect import protect_file
from dispersiond.ops.rekey import rekey
from dispersiond.ops.repair import repair
from dispersiond.ops.restore import restore
from dispersiond.ops.rotate_key import rotate_key
from dispersiond.ops.verify import verify
from dispersiond.state import FileState
from dsp import real_files
from memory_archive import every_object, memory_archive, pack_together


def _protected(v, path: Path) -> str:
    fid = protect_file(v, path)
    finish(v, [fid])
    assert v.db.file(fid).state == FileState.DONE
    return fid


def _restored(v, fid: str, out: Path) -> bytes:
    out.mkdir(exist_ok=True)
    f = restore(v, fid, out)
    return (out / f.name).read_bytes()


@pytest.mark.parametrize("mode", ["erasure", "replicate"])
def test_protect_then_restore_gives_the_bytes_back(tmp_path, mode):
    src = real_files()[0]
    with memory_archive(tmp_path, mode) as v:
        fid = _protected(v, src)
        objs = v.db.objects(fid)
        assert {o.role for o in objs} == {"public", "private"}
        assert len([o for o in objs if o.role == "public"]) == (3 if mode == "erasure" else 2)
        stored = every_object(v)
        for o in objs:
            assert o.name in stored[o.store] and o.state == "uploaded"
        assert any(n.startswith(manifest.PREFIX) for n in stored["vault"])  # backed up
        assert _restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_finish_backs_up_then_marks_done(tmp_path):
    with memory_archive(tmp_path) as v:
        fid = protect_file(v, real_files()[1])
        assert v.db.file(fid).state == FileState.COMMITTED  # no backup holds it yet
        assert not any(n.startswith(manifest.PREFIX) for n in every_object(v)["vault"])
        handled = finish(v, [fid])
        assert list(handled) == [fid] and v.db.file(fid).state == FileState.DONE
        assert v.db.backups("vault")


#: Config that packs the test files' small fragments (the default), or packs nothing.
PACKING = {"packed": {}, "standalone": {"pack": {"threshold": 1}}}


@pytest.mark.parametrize("packing", PACKING)
def test_verify_finds_a_missing_object_and_repair_rebuilds_it(tmp_path, packing):
    src = real_files()[2]
    with memory_archive(tmp_path, **PACKING[packing]) as v:
        fid = _protected(v, src)
        victim = next(o for o in v.db.objects(fid, role="public") if o.shard == 1)
        assert victim.packed == (packing == "packed")
        v.store(victim.store).delete(victim.name)  # the object, or the whole pack
        rep = verify(v)
        assert [(p.file_id, p.store, p.shard, p.problem) for p in rep.findings] == [
            (fid, victim.store, 1, "missing")]
        assert rep.unrestorable == []  # 2 of 3 shards are enough
        fixed = repair(v)
        assert fixed.failed == [] and [(r["store"], r["shard"]) for r in fixed.repaired] == [
            (victim.store, 1)]
        new = next(o for o in v.db.objects(fid, role="public") if o.shard == 1)
        assert new.name != victim.name and new.state == "uploaded"
        assert new.packed == victim.packed  # a pack is re-packed, an object stays one
        assert new.name in every_object(v)[victim.store]
        assert verify(v, deep=True).findings == []
        # the rebuilt shard is really used: without another shard, restore still works
        other = next(o for o in v.db.objects(fid, role="public") if o.shard == 0)
        v.store(other.store).delete(other.name)
        assert _restored(v, fid, tmp_path / "out") == src.read_bytes()


@pytest.mark.parametrize("packing", PACKING)
def test_verify_finds_a_corrupt_object_deep(tmp_path, packing):
    with memory_archive(tmp_path, **PACKING[packing]) as v:
        fid = _protected(v, real_files()[3])
        o = v.db.objects(fid, role="public")[0]
        store = v.store(o.store)
        data = bytearray(store.get_bytes(o.name))
        data[o.offset + o.length // 2] ^= 1  # inside the fragment (a packed one: its member)
        store.delete(o.name)
        store.put(o.name, io.BytesIO(bytes(data)), len(data))
        assert verify(v).findings == []  # same size, no checksum of the same kind
        assert [(p.object, p.problem) for p in verify(v, deep=True).findings] == [
            (o.name, "corrupt")]


def test_forget_removes_every_copy(tmp_path):
    src = real_files()[4]
    with memory_archive(tmp_path) as v:
        fid = _protected(v, src)
        names = {(o.store, o.name) for o in v.db.objects(fid)}
        res = forget(v, fid)
        assert {d["role"] for d in res["deleted"]} == {"public", "private"}
        stored = every_object(v)
        assert not any(name in stored[store] for store, name in names)
        assert v.db.file(fid) is None and not v.has_container(fid)
        # no manifest backup left names the file
        for name in stored["vault"]:
            doc = manifest.open_sealed(v.key, v.store("vault").get_bytes(name))
            assert fid not in {e["file_id"] for e in doc["files"]}
        with pytest.raises(DispersiondError, match="no protected file"):
            restore(v, fid, tmp_path)


def test_rekey_replaces_every_object_and_still_restores(tmp_path):
    src = real_files()[5]
    with memory_archive(tmp_path) as v:
        fid = _protected(v, src)
        before = {(o.store, o.name) for o in v.db.objects(fid)}
        container = v.container(fid)
        res = rekey(v, fid)
        assert res["old_deleted"] and res["new_objects"] == len(before)
        # a small file: the new version's fragments go into new packs (one per store)
        assert res["new_packs"] == len(before) and all(o.packed for o in v.db.objects(fid))
        after = {(o.store, o.name) for o in v.db.objects(fid)}
        assert not before & after and all(v.db.pack(s, n) for s, n in after)
        stored = every_object(v)
        assert all(name in stored[s] for s, name in after)
        assert not any(name in stored[s] for s, name in before)
        assert v.container(fid) != container  # a fresh secret
        assert not list((v.root / "work").iterdir())  # no plaintext left behind
        assert _restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_rotate_key_rewraps_containers_and_leaves_public_objects(tmp_path):
    src = real_files()[0]
    with memory_archive(tmp_path) as v:
        fid = _protected(v, src)
        old_id = key_id(v.key)
        public = v.db.objects(fid, role="public")
        assert all(o.packed for o in public)  # a small file: its fragments are in packs
        members = {(o.store, o.shard, o.offset, o.length, o.digest) for o in public}
        private = {o.name for o in v.db.objects(fid, role="private")}
        res = rotate_key(v)
        assert res["containers_rewrapped"] == 1 and res["public_objects_rewritten"] == 0
        assert res["new_key_id"] != old_id and key_id(v.key) == res["new_key_id"]
        assert Path(v.cfg.path(v.cfg.key.file)).read_bytes() == v.key
        # a pack is keyed from the master key: each is re-masked under a new name, its
        # members' bytes unchanged, and the old packs are gone
        after = v.db.objects(fid, role="public")
        assert res["public_packs_remasked"] == len(public) == 3
        assert {(o.store, o.shard, o.offset, o.length, o.digest) for o in after} == members
        assert not {o.name for o in public} & {o.name for o in after}
        assert not {o.name for o in public} & set().union(*every_object(v).values())
        new_private = {o.name for o in v.db.objects(fid, role="private")}
        assert not new_private & private
        assert not private & every_object(v)["vault"]  # the old wraps are gone
        v.drop_container(fid)  # restore from the re-wrapped backup on the vault
        assert _restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_rotate_key_writes_shared_packs_again_and_resumes_after_a_store_failure(tmp_path):
    """Packs are keyed from the master key: rotation writes each again under the new one
    (packed containers re-wrapped, public members unchanged). A store that fails part way
    leaves the rotation unfinished; run again, it takes up where it stopped."""
    from dispersiond.pack import open_index

    srcs = real_files()[3:6]
    with memory_archive(tmp_path) as v:
        fids = pack_together(v, srcs)
        rows = {o.id: o for fid in fids for o in v.db.objects(fid)}
        old_packs = {(o.store, o.name) for o in rows.values()}
        assert len(old_packs) == 4  # one per public store (3 members each) and the vault's
        old_id = key_id(v.key)
        v.store("cloud-b").fail_next(1, verbs={"put"})
        with pytest.raises(DispersiondError, match="run rotate-key again"):
            rotate_key(v)
        assert key_id(v.key) == old_id  # not switched: the rotation is unfinished
        moved = {o.store for fid in fids for o in v.db.objects(fid)
                 if (o.store, o.name) not in old_packs}
        assert moved == {"vault", "cloud-a"}  # what got done before cloud-b failed
        res = rotate_key(v)
        assert res["new_key_id"] != old_id
        assert res["containers_rewrapped"] == 0  # done by the first run
        assert res["public_packs_remasked"] == 2  # cloud-a's was done by the first run
        assert res["public_objects_rewritten"] == res["packed_members_unreadable"] == 0
        after = {o.id: o for fid in fids for o in v.db.objects(fid)}
        for i, o in after.items():
            assert o.packed and (o.store, o.name) not in old_packs
            if o.role == "public":  # the same member bytes, in a new pack
                assert (o.length, o.digest) == (rows[i].length, rows[i].digest)
        new_packs = {(o.store, o.name) for o in after.values()}
        assert len(new_packs) == 4 and all(v.db.pack(*p).members == 3 for p in new_packs)
        for store, name in new_packs:  # each opens under the new key
            size = v.db.pack(store, name).size
            index = open_index(v.key, name, v.store(store).get_bytes(name), size)
            assert {m.ref.hex() for m in index.members} == set(fids)
        on = {(s, n) for s, ns in every_object(v).items() for n in ns}
        assert not old_packs & on and new_packs <= on
        for fid, src in zip(fids, srcs):
            v.drop_container(fid)  # from the re-wrapped container in the pack
            assert _restored(v, fid, tmp_path / "out") == src.read_bytes()


def test_one_layout_shape_for_the_row_and_the_manifest_entry(tmp_path):
    with memory_archive(tmp_path) as v:
        fid = _protected(v, real_files()[1])
        f = v.db.file(fid)
        lay = Layout.of_row(f)
        assert (lay.mode, lay.k, lay.n, lay.need) == ("erasure", 2, 3, 2)
        assert Layout.of_row(type("Row", (), lay.row_fields())) == lay
        e = manifest.entry(v.db, f)
        assert set(e) == {*manifest.FILE_FIELDS, "objects"}  # the document's keys stay
        assert e["public_mode"] == "erasure" and e["prf_len"] == f.container_len
        assert Layout.of_entry(e) == lay
        payload = lay.payload_fields()
        assert payload["public"] == {"mode": "erasure", "k": 2, "n": 3, "block": f.block}
        back = Layout.of_payload(payload)
        assert (back.mode, back.k, back.n, back.block, back.puf_len, back.prf_digest) == (
            lay.mode, lay.k, lay.n, lay.block, lay.puf_len, lay.prf_digest)


def test_finish_records_a_failing_after_policy_and_finalizes_the_files_before_it(tmp_path):
    from dispersiond.ops.finalize import AfterPolicyFailed

    with memory_archive(tmp_path) as v:
        a, b = (protect_file(v, p) for p in real_files()[:2])

        def after(files):  # the after-policy of a batch: outcomes, and what failed
            ok = {f.file_id: "kept" for f in files if f.file_id != b}
            return ok, [(f, PermissionError(13, "Permission denied"))
                        for f in files if f.file_id == b]

        with pytest.raises(AfterPolicyFailed) as failed:
            finish(v, [a, b], after=after)
        assert failed.value.file_id == b and "after-policy failed" in str(failed.value)
        assert v.db.file(a).state == FileState.DONE
        assert v.db.file(b).state == FileState.COMMITTED
        assert "after-policy failed" in v.db.file(b).error
        assert finish(v, [b], after=lambda fs: ({f.file_id: "kept" for f in fs}, [])) == {
            b: {"bundles": [], "original": "kept", "done": True}}


def test_finish_keeps_the_stage_of_an_upload_still_pending(tmp_path):
    with memory_archive(tmp_path, "replicate") as v:
        v.store("cloud-b").down = True
        fid = protect_file(v, real_files()[5])  # restorable from cloud-a: committed
        finish(v, [fid])
        assert v.db.file(fid).state == FileState.COMMITTED
        pending = v.db.objects(fid, states=("pending",))
        assert [o.store for o in pending] == ["cloud-b"]
        assert v.staged_path(fid, "public", None).exists()  # what the retry sends
        v.store("cloud-b").down = False
        from dispersiond.ops.protect import resume

        resume(v, fid)
        finish(v, [fid])
        assert v.db.file(fid).state == FileState.DONE and not v.work_dir(fid).exists()
