"""SIGKILL during forget's private-pack rewrite and during prune, at every step between
an upload and the old pack's deletion: after the next run no record is lost (every file
restores bit-exact, from the state and from a recovered manifest backup), none is held
twice, no pack is left unreferenced, and the forgotten file's container is nowhere."""
from __future__ import annotations

import collections
import shutil
import time
from pathlib import Path

import pytest

from crashpoint import Stopped
from dispersiond.pack import open_index
from dispersiond.ops.restore import restore
from dsp import cli, cli_json, local_config
from packed import archive, container_pieces, holders, protect_together, records, unaccounted
from test_prune import DAY, _our_pack, two_vaults

MOVE = "dispersiond.state.prune_rows:PruneMixin.move_members"
RELEASE = "dispersiond.state.prune_rows:PruneMixin.release_packs"

FORGET_POINTS = [
    ("new pack uploaded, not committed", MOVE, "before", 1),
    ("first private pack committed, second not", MOVE, "before", 2),
    ("every private pack committed", MOVE, "after", 2),
    ("file rows gone, no backup yet", "dispersiond.ops.forget:backup_manifest", "before", 1),
    ("backed up, old packs not released", "dispersiond.ops.forget:release", "before", 1),
    ("old packs in the trash, not deleted", RELEASE, "after", 1),
]
PRUNE_POINTS = [
    ("new pack uploaded, not committed", MOVE, "before", 1),
    ("one store's pack committed", MOVE, "after", 1),
    ("two stores' packs committed", MOVE, "after", 2),
    ("every pack committed, none released", "dispersiond.ops.prune:release", "before", 2),
    ("old packs in the trash, not deleted", RELEASE, "after", 1),
    ("in the sweep, judging", "dispersiond.ops.sweep:_judge", "before", 1),
    ("in the sweep, trashed", "dispersiond.state.prune_rows:PruneMixin.sweep_out", "after", 1),
]


def check(cfg: Path, tmp: Path, keep: dict[str, Path], gone: list[str]) -> None:
    """Every kept file restores bit-exact and once; nothing on a store is unaccounted
    for; no byte of a forgotten file's container is left; a recover from the manifest
    backup alone restores them all too."""
    with archive(cfg) as v:
        assert {f.file_id for f in v.db.files()} == set(keep)
        per_slot = collections.Counter((o.file_id, o.store, o.role, o.shard)
                                       for o in v.db.objects())
        assert set(per_slot.values()) == {1}, "a member is referenced twice"
        for p in v.db.packs():
            members = v.db.pack_members(p.store, p.name)
            assert members, f"pack {p.name} on {p.store} left without members"
            idx = open_index(v.key, p.name, v.store(p.store).get_bytes(p.name), p.size)
            refs = {m.ref.hex(): m for m in idx.members}
            for o in members:  # each row points at its own member, where the index says
                m = refs[o.file_id]
                assert (m.offset, m.length, m.digest) == (o.offset, o.length, o.digest)
        assert unaccounted(v) == {}
        assert v.db.trashed() == [] and not v.db.query("SELECT 1 FROM planned")
        for pieces in gone:
            assert holders(v, pieces) == set()
        out = tmp / "out"
        out.mkdir(exist_ok=True)
        for fid, src in keep.items():
            f = restore(v, fid, out)
            assert (out / f.name).read_bytes() == src.read_bytes()
    shutil.move(tmp / "state", tmp / "state-before-recover")
    assert cli_json(cfg, "recover")["files"] == len(keep)
    with archive(cfg) as v:
        out = tmp / "out-recovered"
        out.mkdir(exist_ok=True)
        for fid, src in keep.items():
            f = restore(v, fid, out)
            assert (out / f.name).read_bytes() == src.read_bytes()


@pytest.mark.parametrize("what,at,when,nth", FORGET_POINTS, ids=[p[0] for p in FORGET_POINTS])
def test_sigkill_during_forget_then_forget_again(tmp_path, what, at, when, nth):
    cfg = two_vaults(tmp_path)
    paths = records(tmp_path, 5)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        victim = fids[1]
        pieces = container_pieces(v, victim)
    Stopped(cfg, ["forget", victim], at=at, when=when, nth=nth).wait().kill()
    code, _, err = cli(cfg, "forget", victim, expect=None)  # the next run finishes the work
    assert code == 0 or (code == 2 and "no protected file" in err), err
    if code == 2:
        cli(cfg, "prune")  # the crash came after the rows went: prune (or the daemon) ends it
    check(cfg, tmp_path, {f: p for f, p in zip(fids, paths) if f != victim}, [pieces])


@pytest.mark.parametrize("what,at,when,nth", PRUNE_POINTS, ids=[p[0] for p in PRUNE_POINTS])
def test_sigkill_during_prune_then_prune_again(tmp_path, what, at, when, nth):
    cfg = local_config(tmp_path)
    paths = records(tmp_path, 6)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        gone = [container_pieces(v, f) for f in fids[:2]]
        before = {(p.store, p.name) for p in v.db.packs(kind="public")}
    cli(cfg, "forget", fids[0])
    cli(cfg, "forget", fids[1])  # 2 of 6 members dead: every public pack gets rewritten
    if what.startswith("in the sweep"):  # an unreferenced pack of ours, seen 2 days ago
        with archive(cfg) as v:
            name, data = _our_pack(v, fids[2:4])
            v.store("cloud-a").put_bytes(name, data)
            v.db.note_unknown("cloud-a", {name}, now=time.time() - 2 * DAY)
    Stopped(cfg, ["prune"], at=at, when=when, nth=nth).wait().kill()
    res = cli_json(cfg, "prune", expect=None)
    assert res["failed"] == []
    with archive(cfg) as v:
        assert not before & {(p.store, p.name) for p in v.db.packs()}, "an old pack is left"
    check(cfg, tmp_path, dict(zip(fids[2:], paths[2:])), gone)
