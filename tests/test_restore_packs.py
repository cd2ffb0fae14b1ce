"""Bulk restore and recover with packs: many members of one pack come with one request per
pack, each member still checked on its own (a tampered member fails its own file only),
and what a bulk restore holds stays bounded (spans spill to a file, are dropped when done)."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from dispersiond import manifest
from dispersiond.archive import open_archive
from dispersiond.config import load_config
from dispersiond.ops import packread
from dispersiond.ops.packread import PackWindows
from dispersiond.ops.restore import first_choices, restore_many
from dispersiond.pack import Span, plan_spans
from dispersiond.traffic import TRAFFIC
from dsp import cli, cli_json, kept_containers, local_config, write_config
from packed import archive, protect_together


def records(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"lab-{i:03d}.json"
        p.write_bytes(os.urandom(200 + (i * 7919) % 30000))
        out.append(p)
    return out


def protect_batch(cfg: Path, paths: list[Path]) -> list[str]:
    """`paths` protected together: their small fragments share one pack per store."""
    with archive(cfg) as v:
        return protect_together(v, paths)


def gets() -> dict[str, int]:
    """GET requests per store so far in this process (every configured store is counted)."""
    return {name: t.requests.get("get", 0) for name, t in TRAFFIC.snapshot().items()}


def gets_since(before: dict[str, int]) -> dict[str, int]:
    return {s: n - before.get(s, 0) for s, n in gets().items() if n - before.get(s, 0)}


def same_bytes(originals: list[Path], out: Path) -> None:
    for f in originals:
        assert hashlib.sha256((out / f.name).read_bytes()).digest() == \
            hashlib.sha256(f.read_bytes()).digest(), f.name


def packs_of(cfg: Path, role: str) -> dict[str, set[str]]:
    """Store -> names of the packs holding the files' `role` members."""
    with open_archive(load_config(cfg)) as v:
        out: dict[str, set[str]] = {}
        for o in v.db.objects(None, role=role):
            assert o.packed
            out.setdefault(o.store, set()).add(o.name)
        return out


def flip_member_byte(cfg: Path, fid: str, store: str, role: str = "public") -> None:
    """Change one byte of `fid`'s member inside its pack on `store` (the store's own file)."""
    with open_archive(load_config(cfg)) as v:
        (obj,) = [o for o in v.db.objects(fid, role=role) if o.store == store]
        path = v.store(store).inner._path(obj.name)
    with open(path, "r+b") as f:
        f.seek(obj.offset + obj.length // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("mode", ["replicate", "erasure"])
def test_packed_files_restore_bit_exact_with_one_request_per_pack(tmp_path, mode):
    cfg = local_config(tmp_path, mode)
    files = records(tmp_path / "in", 40)
    protect_batch(cfg, files)
    public = packs_of(cfg, "public")
    assert all(len(names) == 1 for names in public.values())  # one pack per store
    out = tmp_path / "out"
    out.mkdir()
    before = gets()
    res = cli_json(cfg, "restore", "--all", "--to", str(out), "--jobs", "6")
    assert (res["restored"], res["failed"]) == (40, 0)
    same_bytes(files, out)
    used = gets_since(before)
    # replicate: one replica's pack; erasure (k = 2): the packs of two stores; one GET each
    assert sum(used.values()) == (1 if mode == "replicate" else 2)
    assert set(used) <= set(public) and set(used.values()) == {1}
    assert len(cli_json(cfg, "audit", "ls", "--event", "restore")) == 40
    cli(cfg, "audit", "verify")


def test_without_the_local_containers_the_private_pack_is_read_once(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path / "in", 25)
    protect_batch(cfg, files)
    shutil.rmtree(tmp_path / "state" / "prf")
    (tmp_path / "state" / "prf").mkdir()
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:  # and any kept in the database
        db.execute("DELETE FROM containers")
    assert not kept_containers(tmp_path / "state")
    out = tmp_path / "out"
    out.mkdir()
    before = gets()
    res = cli_json(cfg, "restore", "--all", "--to", str(out))
    assert (res["restored"], res["failed"]) == (25, 0)
    same_bytes(files, out)
    used = gets_since(before)
    assert used.pop("vault") == 1 and sum(used.values()) == 1


def test_a_tampered_member_in_a_shared_pack_fails_only_its_own_file(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path / "in", 12)
    ids = protect_batch(cfg, files)
    victim = 5
    for store in ("cloud-a", "cloud-b"):  # both replicas of its public fragment
        flip_member_byte(cfg, ids[victim], store)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(cfg, "restore", "--all", "--to", str(out), "--json", expect=1)
    failed = [line for line in err.splitlines() if line.startswith("dispersiond: failed:")]
    assert len(failed) == 1 and ids[victim] in failed[0] and "does not match its digest" in failed[0]
    assert not (out / files[victim].name).exists()
    same_bytes(files[:victim] + files[victim + 1:], out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    with open_archive(load_config(cfg)) as v:
        states = {(o.file_id, o.store): o.state for o in v.db.objects(None, role="public")}
    assert {s for (fid, _), s in states.items() if fid == ids[victim]} == {"corrupt"}
    assert {s for (fid, _), s in states.items() if fid != ids[victim]} == {"uploaded"}


def test_a_bad_shard_falls_back_to_another_store_and_the_file_restores(tmp_path):
    cfg = local_config(tmp_path, "erasure")
    files = records(tmp_path / "in", 10)
    ids = protect_batch(cfg, files)
    flip_member_byte(cfg, ids[3], "cloud-a")  # shard 0, one of the two fetched first
    out = tmp_path / "out"
    out.mkdir()
    before = gets()
    res = cli_json(cfg, "restore", "--all", "--to", str(out))
    assert (res["restored"], res["failed"]) == (10, 0)
    same_bytes(files, out)
    # the two planned packs once each, and the third store's pack for that file's shard
    assert gets_since(before) == {"cloud-a": 1, "cloud-b": 1, "cloud-c": 1}


def test_a_lost_pack_fails_its_files_and_marks_them_missing(tmp_path):
    stores = [{"name": n, "type": "local", "trust": t, "path": str(tmp_path / n)}
              for n, t in (("cloud-a", "untrusted"), ("vault", "trusted"))]
    cfg = write_config(tmp_path, stores, {"mode": "replicate", "stores": ["cloud-a"]},
                       {"min_trust": "trusted", "stores": ["vault"]})
    files = records(tmp_path / "in", 6)
    ids = protect_batch(cfg, files)
    (pack,) = packs_of(cfg, "public")["cloud-a"]
    with open_archive(load_config(cfg)) as v:
        v.store("cloud-a").delete(pack)
    out = tmp_path / "out"
    out.mkdir()
    before = gets()
    code, _, err = cli(cfg, "restore", "--all", "--to", str(out), expect=1)
    assert gets_since(before) == {"cloud-a": 1}  # the pack was asked for once, not per file
    assert sum(1 for line in err.splitlines() if "missing" in line) == 6
    with open_archive(load_config(cfg)) as v:
        public = v.db.objects(None, role="public")
        assert {o.state for o in public} == {"missing"} and {o.file_id for o in public} == set(ids)
        assert v.db.pack("cloud-a", pack).state == "missing"
    assert list(out.iterdir()) == []


def test_spans_spill_to_a_nameless_file_and_are_dropped_when_done(tmp_path, monkeypatch):
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path / "in", 8)
    ids = protect_batch(cfg, files)
    monkeypatch.setattr(packread, "SPILL_ABOVE", 0)  # every span goes to a file
    with open_archive(load_config(cfg)) as v:
        fs = [v.db.file(fid) for fid in ids]
        windows = PackWindows(v, first_choices(v, fs), v.root / "work")
        (w,) = set(windows._by_key.values())
        obj = first_choices(v, fs[:1])[0]
        start, read = windows.window(obj)
        assert w.fd is not None and w.data is None and windows._held == 0
        assert not [p for p in (v.root / "work").iterdir() if p.name.startswith(".span-")]
        assert len(read(obj.offset, obj.length)) == obj.length
        for fid in ids[:-1]:
            windows.release(fid)
        assert w.fd is not None  # the last file still needs it
        windows.release(ids[-1])
        assert w.fd is None
        out = tmp_path / "out"
        out.mkdir()
        report = restore_many(v, fs, out, jobs=3)
    assert len(report.restored) == 8
    same_bytes(files, out)


def test_spans_held_in_memory_respect_the_budget(tmp_path, monkeypatch):
    cfg = local_config(tmp_path, "erasure")
    files = records(tmp_path / "in", 8)
    ids = protect_batch(cfg, files)
    with open_archive(load_config(cfg)) as v:
        fs = [v.db.file(fid) for fid in ids]
        wanted = first_choices(v, fs)
        first = PackWindows(v, wanted, v.root / "work")
        by_store = {o.store: o for o in wanted if o.file_id == ids[0]}
        a, b = (first._by_key[packread.member_key(by_store[s])] for s in ("cloud-a", "cloud-b"))
        monkeypatch.setattr(packread, "MEMORY_BUDGET", a.span.length)
        first.window(by_store["cloud-a"])
        first.window(by_store["cloud-b"])  # would pass the budget: to a file instead
        assert a.data is not None and b.fd is not None and first._held == a.span.length
        first.close()
        assert first._held == 0 and a.data is None and b.fd is None


def test_plan_spans_merges_near_members_and_keeps_far_ones_apart():
    k = 1 << 16
    size = 200 * k
    spans = plan_spans([(10, 100), (k + 5, 10), (3 * k, 0), (150 * k, 2 * k), (5 * k, 1)],
                       size, gap=4 * k)
    assert spans == [Span(0, 6 * k, (0, 1, 4)), Span(150 * k, 2 * k, (3,))]
    # without a gap allowance only touching blocks merge
    assert [(s.start, s.length) for s in plan_spans([(0, k), (k, 1), (3 * k, 1)], size,
                                                    gap=0)] == [(0, 2 * k), (3 * k, k)]
    # the last block stops at the pack's end
    assert plan_spans([(size - 3, 3)], size) == [Span(size - k, k, (0,))]


def test_recover_reads_each_private_pack_once(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 1e9)
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path / "in", 20)
    ids = protect_batch(cfg, files)
    assert len(packs_of(cfg, "private")["vault"]) == 1
    flip_member_byte(cfg, ids[7], "vault", role="private")
    shutil.rmtree(tmp_path / "state")
    with open_archive(load_config(cfg)) as v:
        backups = len(list(v.store("vault").list(manifest.PREFIX)))
    before = gets()
    res = cli_json(cfg, "recover")
    assert res["files"] == 20 and res["private_containers_fetched"] == 19
    assert [m["file_id"] for m in res["missing_containers"]] == [ids[7]]
    # the manifest backups (listed, then each read), then the one private pack
    assert gets_since(before)["vault"] == backups + 1
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli(cfg, "restore", "--all", "--to", str(out), expect=1)
    same_bytes(files[:7] + files[8:], out)
    assert ids[7] in err and not (out / files[7].name).exists()
