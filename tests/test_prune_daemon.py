"""prune in the daemon (`dispersiond run` as a real subprocess): on schedule.prune, on its
maintenance thread, beside its own work; and at start-up, the packs a killed prune left
without members, deleted once the daemon's own manifest backup has landed."""
from __future__ import annotations

import pytest

from backends import open_store
from daemonctl import DaemonProc, daemon_config, status, wait_until
from dispersiond.config import load_config
from dispersiond.ops import prune as prune_mod
from dispersiond.ops.prune import prune
from packed import archive, protect_together, records, unaccounted
from test_prune import all_restore


def _listed(cfg) -> set[tuple[str, str]]:
    """What the stores hold, looked at beside the running daemon (no lock taken)."""
    c = load_config(cfg)
    out = set()
    for sc in c.stores:
        with open_store("local", sc.name, path=sc.model_extra["path"]) as s:
            out |= {(sc.name, n) for n in s.list("")}
    return out


def test_the_daemon_prunes_on_its_schedule(tmp_path):
    cfg = daemon_config(tmp_path, schedule={"prune": "2s"})
    paths = records(tmp_path, 6)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        from dispersiond.ops.forget import forget
        forget(v, fids[0])
        forget(v, fids[1])
        old = {(p.store, p.name) for p in v.db.packs(kind="public")}
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        runs = wait_until(lambda: status(cfg)["next_runs"], 30, "the schedule", d)
        assert "prune" in runs
        wait_until(lambda: not old & _listed(cfg), 60, "the old packs rewritten and deleted", d)
        code, _ = d.terminate()
    finally:
        d.kill()
    assert code == 0
    assert any(line.get("msg") == "prune finished" for line in d.lines())
    with archive(cfg) as v:
        assert len(v.db.packs(kind="public")) == 3 and unaccounted(v) == {}
        all_restore(v, fids[2:], paths[2:], tmp_path / "out")


def test_the_daemon_deletes_packs_a_killed_prune_left_once_its_backup_landed(
        tmp_path, monkeypatch: pytest.MonkeyPatch):
    cfg = daemon_config(tmp_path, schedule={"prune": None})
    paths = records(tmp_path, 4)
    with archive(cfg) as v:
        fids = protect_together(v, paths)
        from dispersiond.ops.forget import forget
        forget(v, fids[0])
        forget(v, fids[1])
        old = {(p.store, p.name) for p in v.db.packs(kind="public")}
        with monkeypatch.context() as m:  # the prune dies after its commits
            m.setattr(prune_mod, "release", lambda v, write=True: ([], []))
            prune(v, swept=False)
        assert {(p.store, p.name) for p in v.db.empty_packs()} == old and v.db.manifest_dirty()
    assert old <= _listed(cfg)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: not old & _listed(cfg), 60, "the emptied packs deleted", d)
        code, _ = d.terminate()
    finally:
        d.kill()
    assert code == 0
    with archive(cfg) as v:
        assert v.db.empty_packs() == [] and unaccounted(v) == {}
        all_restore(v, fids[2:], paths[2:], tmp_path / "out")
