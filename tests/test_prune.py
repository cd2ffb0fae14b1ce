"""forget, prune and the sweep with packs (docs/FORMAT.md §8.5), over real local stores:
crypto-erasure inside shared packs, repacking at the dead-share threshold, deleting packs
without members only after a manifest backup, and the sweep of packs nobody references."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from backends.memory import MemoryStore
from dispersiond.config import load_config
from dispersiond.errors import DispersiondError
from dispersiond.ops import prune as prune_mod
from dispersiond.ops.forget import forget
from dispersiond.ops.prune import prune
from dispersiond.ops.restore import restore
from dispersiond.pack import PackWriter, open_index
from dsp import cli, cli_json, local_config, write_config
from packed import (archive, container_pieces, holders, protect_together, random_name,
                    records, unaccounted)

DAY = 24 * 3600.0


def two_vaults(tmp: Path, mode: str = "erasure") -> Path:
    """Three clouds and two trusted stores: every private pack exists twice."""
    stores = [{"name": f"cloud-{c}", "type": "local", "trust": "untrusted",
               "path": str(tmp / f"cloud-{c}")} for c in "abc"]
    stores += [{"name": n, "type": "local", "trust": "trusted", "path": str(tmp / n)}
               for n in ("vault", "vault2")]
    public = ({"mode": "erasure", "stores": ["cloud-a", "cloud-b", "cloud-c"], "k": 2}
              if mode == "erasure" else {"mode": "replicate", "stores": ["cloud-a", "cloud-b"]})
    return write_config(tmp, stores, public, {"min_trust": "trusted",
                                              "stores": ["vault", "vault2"]})


def restored(v, fid: str, out: Path) -> bytes:
    out.mkdir(exist_ok=True)
    f = restore(v, fid, out)
    return (out / f.name).read_bytes()


def all_restore(v, fids, paths, out: Path) -> None:
    for fid, p in zip(fids, paths):
        assert restored(v, fid, out) == p.read_bytes(), p.name


def clean(v) -> None:
    """Nothing on a store the state does not name, nothing waiting, no pack without members."""
    assert unaccounted(v) == {}
    assert v.db.trashed() == [] and not v.db.query("SELECT 1 FROM planned")
    assert v.db.empty_packs() == []


# ------------------------------------------------------------------ forget

@pytest.mark.parametrize("mode", ["erasure", "replicate"])
def test_forget_of_a_packed_file_leaves_no_byte_of_its_container_on_any_store(tmp_path, mode):
    cfg = two_vaults(tmp_path, mode)
    paths = records(tmp_path, 6)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        victim = fids[2]
        private = {(o.store, o.name) for o in v.db.objects(victim, role="private")}
        assert len(private) == 2 and all(o.packed for o in v.db.objects(victim))
        assert {len(v.db.pack_members(s, n)) for s, n in private} == {6}  # shared packs
        container = container_pieces(v, victim)
        # the scan finds the container in both private packs, and only unmasked
        assert holders(v, container) == private
        assert not any(p in v.store(s).get_bytes(n) for s, n in private for p in container)
        public = {(o.store, o.name) for o in v.db.objects(victim, role="public")}

        res = forget(v, victim)

        assert holders(v, container) == set()  # no byte of it left anywhere, masked or not
        assert not v.has_container(victim)
        notes = {(d["store"], d["object"]): d.get("note", "") for d in res["deleted"]}
        assert all("rewritten into" in notes[p] for p in private)
        assert {(d["store"], d["object"]) for d in res["in_packs"]} == public  # dead bytes
        for s, n in private:  # the old private packs are gone, the new ones hold the rest
            assert n not in set(v.store(s).list(""))
        for p in v.db.packs(kind="private"):
            idx = open_index(v.key, p.name, v.store(p.store).get_bytes(p.name), p.size)
            assert {m.ref.hex() for m in idx.members} == set(fids) - {victim}
        all_restore(v, [f for f in fids if f != victim], [p for f, p in zip(fids, paths)
                                                           if f != victim], tmp_path / "out")
        clean(v)
        # the newest (and only) manifest backup names the new packs, not the old
        with pytest.raises(DispersiondError, match="no protected file"):
            restore(v, victim, tmp_path / "out")


def test_forget_keep_public_leaves_the_public_packs_and_rewrites_the_private(tmp_path):
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 4)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        before = {sc.name: set(v.store(sc.name).list("")) for sc in v.cfg.stores[:3]}
        container = container_pieces(v, fids[0])
        res = forget(v, fids[0], keep_public=True)
        assert {sc.name: set(v.store(sc.name).list("")) for sc in v.cfg.stores[:3]} == before
        assert len(res["in_packs"]) == 3 and holders(v, container) == set()
        all_restore(v, fids[1:], paths[1:], tmp_path / "out")


def test_forget_of_a_packs_only_member_deletes_the_pack(tmp_path):
    cfg = local_config(tmp_path)
    with archive(cfg) as v:
        [fid] = protect_together(v, records(tmp_path, 1))
        packs = {(p.store, p.name) for p in v.db.packs()}
        assert len(packs) == 4
        res = forget(v, fid)
        assert {(d["store"], d["object"]) for d in res["deleted"]} >= packs
        assert res["in_packs"] == [] and v.db.packs() == []
        clean(v)


def test_forget_with_the_private_store_down_changes_nothing_and_runs_again(tmp_path):
    cfg = load_config(local_config(tmp_path))
    paths = records(tmp_path, 3)
    from dispersiond.archive import open_archive
    with open_archive(cfg, exclusive=True) as v:
        for sc in cfg.stores:
            v.attach_store(sc.name, MemoryStore(sc.name))
        fids = protect_together(v, paths)
        rows = {o.id: o for o in v.db.objects()}
        v.store("vault").down = True
        with pytest.raises(DispersiondError, match="Nothing was forgotten"):
            forget(v, fids[1])
        assert {o.id: o for o in v.db.objects()} == rows  # no row moved, none gone
        assert v.has_container(fids[1])
        v.store("vault").down = False
        all_restore(v, fids, paths, tmp_path / "out")
        forget(v, fids[1])  # the planned name of the failed rewrite goes with the trash
        all_restore(v, [fids[0], fids[2]], [paths[0], paths[2]], tmp_path / "out2")
        clean(v)


def test_forget_defers_the_old_pack_when_its_store_stops_answering(tmp_path):
    """The rewrite landed and committed, then the store went away: the old pack waits in
    the trash (reported), and goes with the next run once the store answers."""
    cfg = load_config(local_config(tmp_path))
    from dispersiond.archive import open_archive
    with open_archive(cfg, exclusive=True) as v:
        for sc in cfg.stores:
            v.attach_store(sc.name, MemoryStore(sc.name))
        fids = protect_together(v, records(tmp_path, 3))
        container = container_pieces(v, fids[0])
        [(store, old)] = {(o.store, o.name) for o in v.db.objects(fids[0], role="private")}
        vault = v.store("vault")
        real_delete = vault.delete

        def refuse(name):
            if name == old:
                raise __import__("backends").Unavailable("vault", "injected: down")
            return real_delete(name)

        vault.delete = refuse
        res = forget(v, fids[0])
        assert [(d["store"], d["object"]) for d in res["deferred"]] == [(store, old)]
        assert (store, old) in v.db.trashed() and holders(v, container) == {(store, old)}
        vault.delete = real_delete
        v.empty_trash()
        assert holders(v, container) == set()
        clean(v)


# ------------------------------------------------------------------ prune

def test_prune_keeps_a_pack_below_the_dead_share_and_repacks_at_it(tmp_path):
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 10)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        public = {(p.store, p.name) for p in v.db.packs(kind="public")}
        assert len(public) == 3
        for fid in fids[:2]:
            forget(v, fid)
        rep = prune(v)
        assert rep.count("repack") == 0 and rep.new_packs == []
        assert {round(d.dead_fraction, 3) for d in rep.decisions if d.pack.kind == "public"} \
            == {0.2}
        assert {(p.store, p.name) for p in v.db.packs(kind="public")} == public
        forget(v, fids[2])  # 3 of 10 equal members dead: 0.3, the default threshold
        rep = prune(v)
        assert sorted((d.pack.store, d.pack.name) for d in rep.decisions
                      if d.action == "repack") == sorted(public)
        assert len(rep.new_packs) == 3 and {n["members"] for n in rep.new_packs} == {7}
        assert {(d["store"], d["pack"]) for d in rep.deleted} == public
        assert rep.freed_bytes > 0
        for s, n in public:
            assert n not in set(v.store(s).list(""))
        for p in v.db.packs(kind="public"):
            live = v.db.pack_members(p.store, p.name)
            assert p.body_len == sum(o.length for o in live) and p.members == 7
            idx = open_index(v.key, p.name, v.store(p.store).get_bytes(p.name), p.size)
            assert [m.ref.hex() for m in idx.members] == [o.file_id for o in live]
        all_restore(v, fids[3:], paths[3:], tmp_path / "out")
        clean(v)
        assert prune(v).count("repack") == 0  # nothing dead any more


def test_prune_merges_sparse_packs_into_fewer(tmp_path):
    cfg = local_config(tmp_path, mode="replicate")
    paths = records(tmp_path, 8)
    with archive(cfg) as v:
        a = protect_together(v, paths[:4])
        b = protect_together(v, paths[4:])
        assert len(v.db.packs(store="cloud-a")) == 2
        for fid in a[:2] + b[:2]:
            forget(v, fid)
        rep = prune(v)
        assert rep.count("repack") == 4  # two packs on each of two clouds, half dead
        assert len(v.db.packs(store="cloud-a")) == 1 and len(v.db.packs(store="cloud-b")) == 1
        assert {n["members"] for n in rep.new_packs} == {4}
        all_restore(v, a[2:] + b[2:], paths[2:4] + paths[6:], tmp_path / "out")
        clean(v)


def test_a_pack_left_without_members_by_a_crash_goes_only_after_a_backup(tmp_path, monkeypatch):
    """A repack whose process died between the commit and the release leaves the old pack
    with no member: the next run deletes it, but never before a manifest backup that
    names the new pack has landed."""
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 4)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        forget(v, fids[0])
        forget(v, fids[1])
        old = {(p.store, p.name) for p in v.db.packs(kind="public")}
        monkeypatch.setattr(prune_mod, "release", lambda v, write=True: ([], []))  # the crash
        monkeypatch.setattr(prune_mod, "housekeeping", lambda v, exclusive=True: ([], []))
        rep = prune(v, swept=False)
        assert len(rep.new_packs) == 3
        monkeypatch.undo()
        assert {(p.store, p.name) for p in v.db.empty_packs()} == old
        assert v.db.manifest_dirty()  # the moves are not in any backup yet
        # the daemon's way (no backup of its own): the packs wait for one
        deleted, waiting = prune_mod.release(v, write=False)
        assert deleted == [] and {(w["store"], w["pack"]) for w in waiting} == old
        for s, n in old:
            assert n in set(v.store(s).list(""))
        seq = v.db.manifest_seq()
        rep = prune(v, swept=False)  # the command writes the backup, then deletes
        assert v.db.manifest_seq() > seq and {(d["store"], d["pack"]) for d in rep.deleted} == old
        all_restore(v, fids[2:], paths[2:], tmp_path / "out")
        clean(v)


def test_prune_reads_the_index_of_a_recovered_pack(tmp_path):
    """After recover the pack rows lack the body length: prune reads each index once,
    records it, and decides as it would have before."""
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 10)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        for fid in fids[:4]:
            forget(v, fid)
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 6
    with archive(cfg) as v:
        assert {(p.body_len, p.members) for p in v.db.packs()} == {(None, None)}
        rep = prune(v)
        public = [d for d in rep.decisions if d.pack.kind == "public"]
        assert {round(d.dead_fraction, 3) for d in public} == {0.4}
        assert {d.action for d in public} == {"repack"}
        assert all(p.body_len is not None for p in v.db.packs())
        all_restore(v, fids[4:], paths[4:], tmp_path / "out")
        clean(v)


def test_prune_dry_run_changes_nothing(tmp_path):
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 4)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        forget(v, fids[0])
        forget(v, fids[1])
        packs = v.db.packs()
        listing = {sc.name: set(v.store(sc.name).list("")) for sc in v.cfg.stores}
        rep = prune(v, dry_run=True)
        assert rep.count("repack") == 3 and rep.new_packs == [] and rep.deleted == []
        assert v.db.packs() == packs
        assert {sc.name: set(v.store(sc.name).list("")) for sc in v.cfg.stores} == listing


def test_prune_skips_a_missing_pack_and_says_run_repair(tmp_path):
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 4)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        forget(v, fids[0])
        forget(v, fids[1])
        victim = v.db.packs(store="cloud-a")[0]
        v.store("cloud-a").delete(victim.name)
        rep = prune(v, swept=False)
        assert [f["store"] for f in rep.failed] == ["cloud-a"]
        assert v.db.pack("cloud-a", victim.name).state == "missing"
        rep = prune(v, swept=False)
        [skip] = [d for d in rep.decisions if d.action == "skip"]
        assert skip.pack.name == victim.name and "repair" in skip.reason
        all_restore(v, fids[2:], paths[2:], tmp_path / "out")  # 2 of 3 shards are enough


def _row(body_len, members, state="uploaded"):
    from dispersiond.state import PackRow
    return PackRow("cloud-a", random_name(), "public", 4096, "00", "blake3", body_len, members,
                   0.0, state, None)


@pytest.mark.parametrize("usage,body,members,action,share", [
    ((7, 700), 1000, 10, "repack", 0.3),   # bytes: 300 of 1000 dead
    ((8, 710), 1000, 10, "keep", 0.29),
    ((1, 0), 0, 4, "repack", 0.75),        # only empty members: by count
    ((3, 0), 0, 4, "keep", 0.25),
    ((0, 0), 1000, 10, "delete", 1.0),
    ((5, 500), 500, 5, "keep", 0.0),
])
def test_the_decision_weighs_dead_bytes_and_by_count_when_there_are_none(
        usage, body, members, action, share):
    d = prune_mod.decide(None, _row(body, members), usage, 0.3)
    assert (d.action, round(d.dead_fraction, 2)) == (action, share)


def test_a_damaged_pack_is_skipped_not_repacked():
    d = prune_mod.decide(None, _row(1000, 10, "corrupt"), (1, 10), 0.3)
    assert d.action == "skip" and "repair" in d.reason


# ------------------------------------------------------------------ the sweep

def _our_pack(v, refs: list[str], key: bytes | None = None) -> tuple[str, bytes]:
    name = random_name()
    w = PackWriter(key or v.key, name, kind="public")
    for ref in refs:
        w.add(bytes.fromhex(ref), b"x" * 300)
    return name, w.close()


def test_the_sweep_deletes_our_unreferenced_pack_only_after_the_grace(tmp_path):
    cfg = local_config(tmp_path)
    with archive(cfg) as v:
        fids = protect_together(v, records(tmp_path, 2))
        name, data = _our_pack(v, fids)  # e.g. an upload whose commit a crash lost
        v.store("cloud-b").put_bytes(name, data)
        t0 = time.time()
        rep = prune(v, now=t0)
        assert [(s["store"], s["name"], s["action"]) for s in rep.swept] == [
            ("cloud-b", name, "waiting")]
        rep = prune(v, now=t0 + DAY - 60)
        assert [s["action"] for s in rep.swept] == ["waiting"]
        rep = prune(v, now=t0 + DAY + 1)
        assert [(s["name"], s["action"]) for s in rep.swept] == [(name, "delete")]
        assert name not in set(v.store("cloud-b").list(""))
        assert v.db.seen_unknown("cloud-b") == {}
        clean(v)


def test_the_sweep_leaves_and_reports_whatever_is_not_our_pack(tmp_path):
    cfg = local_config(tmp_path)
    with archive(cfg) as v:
        fids = protect_together(v, records(tmp_path, 2))
        foreign = {
            random_name(): b"not a pack at all " * 50,
            "somebody-elses/file.txt": b"hello",
        }
        other_key, other = _our_pack(v, fids, key=bytes(32))  # a pack under another key
        foreign[other_key] = other
        for name, data in foreign.items():
            v.store("cloud-a").put_bytes(name, data)
        t0 = time.time()
        prune(v, now=t0)
        rep = prune(v, now=t0 + 2 * DAY)
        verdicts = {s["name"]: (s["action"], s.get("reason", "")) for s in rep.swept}
        assert set(verdicts) == set(foreign)
        assert {a for a, _ in verdicts.values()} == {"foreign"}
        assert "master key" in verdicts[other_key][1]
        assert set(foreign) <= set(v.store("cloud-a").list(""))  # every one left


def test_the_sweep_keeps_a_pack_that_may_hold_a_files_only_copy(tmp_path):
    cfg = local_config(tmp_path)
    with archive(cfg) as v:
        fids = protect_together(v, records(tmp_path, 2))
        pack = v.db.packs(store="cloud-c")[0]
        for o in v.db.pack_members("cloud-c", pack.name):
            v.db.set_object_state(o.id, "missing")  # as verify would mark them
        name, data = _our_pack(v, fids[:1])
        v.store("cloud-c").put_bytes(name, data)
        t0 = time.time()
        prune(v, now=t0)
        rep = prune(v, now=t0 + 2 * DAY)
        [s] = [s for s in rep.swept if s["name"] == name]
        assert s["action"] == "keep" and fids[0] in s["reason"] and "repair" in s["reason"]
        assert name in set(v.store("cloud-c").list(""))


def test_the_sweep_never_touches_what_the_state_knows(tmp_path):
    cfg = local_config(tmp_path)
    with archive(cfg) as v:
        fids = protect_together(v, records(tmp_path, 2))
        planned, rekeyed = _our_pack(v, fids), _our_pack(v, fids)
        for name, data in (planned, rekeyed):
            v.store("cloud-a").put_bytes(name, data)
        v.db.plan_pack("cloud-a", planned[0])  # an upload in flight (the daemon's)
        v.db.plan_rekey(fids[0], [("cloud-a", rekeyed[0])])  # a rekey under way
        t0 = time.time()
        for now in (t0, t0 + 2 * DAY):
            rep = prune(v, now=now, exclusive=False)
            assert rep.swept == []
        assert {planned[0], rekeyed[0]} <= set(v.store("cloud-a").list(""))


# ------------------------------------------------------------------ the command

def test_prune_command_help_json_and_summary(tmp_path):
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 4)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
    _, out, _ = cli(cfg, "prune", "--help")
    assert "pack.prune_dead_fraction" in out and "--dry-run" in out and "sweep_grace" in out
    _, out, _ = cli(None, "--help")
    assert "prune" in out
    cli(cfg, "forget", fids[0])
    cli(cfg, "forget", fids[1])
    dry = cli_json(cfg, "prune", "--dry-run")
    assert dry["dry_run"] and dry["repack"] == 3 and dry["new_packs"] == []
    res = cli_json(cfg, "prune")
    assert res["repack"] == 3 and len(res["new_packs"]) == 3 and len(res["deleted"]) == 3
    assert res["freed_bytes"] > 0 and res["failed"] == []
    _, out, _ = cli(cfg, "prune")
    assert out.startswith("4 packs: 4 kept, 0 rewritten, 0 without a live member deleted; "
                          "0 old packs deleted")
    assert "sweep: 0 unreferenced packs deleted" in out
    with archive(cfg) as v:
        all_restore(v, fids[2:], paths[2:], tmp_path / "out")
        clean(v)


def test_forget_command_names_the_members_left_in_packs(tmp_path):
    cfg = local_config(tmp_path)
    with archive(cfg) as v:
        fids = protect_together(v, records(tmp_path, 3))
    _, out, _ = cli(cfg, "forget", fids[0])
    assert out.count("as dead bytes") == 3 and "rewritten into" in out


def test_schedule_prune_is_a_duration_or_null(tmp_path):
    cfg = local_config(tmp_path)
    assert load_config(cfg).schedule.seconds("prune") == DAY
    raw = yaml.safe_load(cfg.read_text())
    raw["schedule"] = {"prune": None}
    cfg.write_text(yaml.safe_dump(raw))
    assert load_config(cfg).schedule.prune is None
    raw["schedule"] = {"prune": "often"}
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="prune"):
        load_config(cfg)


# ------------------------------------------------------------------ on real cloud servers

@pytest.mark.parametrize("kind", ["s3", "azure", "gcs"])
def test_forget_prune_and_sweep_on_a_cloud_server(tmp_path, make_store_settings, kind):
    """The same over an S3, Azure or GCS server: listings for the sweep, whole and
    ranged reads of packs, deletes; every surviving file restores bit-exact."""
    stores = [{"name": f"cloud-{c}", "type": kind, "trust": "untrusted",
               **make_store_settings(kind)} for c in "abc"]
    stores.append({"name": "vault", "type": kind, "trust": "trusted",
                   **make_store_settings(kind)})
    cfg = write_config(tmp_path, stores, {"mode": "erasure", "k": 2,
                                          "stores": ["cloud-a", "cloud-b", "cloud-c"]},
                       {"min_trust": "trusted", "stores": ["vault"]})
    paths = records(tmp_path, 6)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        pieces = container_pieces(v, fids[0])
        forget(v, fids[0])
        forget(v, fids[1])
        assert holders(v, pieces) == set()
        name, data = _our_pack(v, fids[2:])
        v.store("cloud-b").put_bytes(name, data)
        t0 = time.time()
        rep = prune(v, now=t0)
        assert rep.count("repack") == 3 and len(rep.deleted) == 3
        assert [s["action"] for s in rep.swept] == ["waiting"]
        rep = prune(v, now=t0 + 2 * DAY)
        assert [(s["name"], s["action"]) for s in rep.swept] == [(name, "delete")]
        all_restore(v, fids[2:], paths[2:], tmp_path / "out")
        clean(v)
