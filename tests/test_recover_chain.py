"""`recover` from chains of backups: the newest that verifies, gaps and rolled-back stores
reported, an older state refused, loaded documents checked, and all-or-nothing writes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dispersiond import manifest
from dispersiond.config import load_config
from dispersiond.errors import DispersiondError
from dispersiond.ops.recover import Found, choose
from dispersiond.placement import new_object_name
from dispersiond.state import StateDB
from dispersiond.archive import open_archive
from dsp import (cli, cli_json, local_config, manifest_objects, put, restores, whole,
                 write_config)


def records(tmp: Path, count: int, start: int = 0) -> list[Path]:
    d = tmp / "records"
    d.mkdir(exist_ok=True)
    out = []
    for i in range(start, start + count):
        p = d / f"note-{i:04d}.txt"
        p.write_bytes(f"visit {i}\n".encode() + os.urandom(1500))
        out.append(p)
    return out


def two_vaults(tmp: Path) -> Path:
    stores = [{"name": f"cloud-{c}", "type": "local", "trust": "untrusted",
               "path": str(tmp / f"cloud-{c}")} for c in "ab"]
    stores += [{"name": n, "type": "local", "trust": "trusted", "path": str(tmp / n)}
               for n in ("vault", "vault2")]
    return write_config(tmp, stores, {"mode": "replicate", "stores": ["cloud-a", "cloud-b"]},
                        {"min_trust": "trusted", "stores": ["vault", "vault2"]})


def names_by_seq(cfg: Path, store: str) -> dict[int, str]:
    with open_archive(load_config(cfg)) as v:
        s = v.store(store)
        return {manifest.read(v.key, s.get_bytes(n), n)["seq"]: n
                for n in s.list(manifest.PREFIX)}


def delete(cfg: Path, store: str, name: str) -> None:
    with open_archive(load_config(cfg)) as v:
        v.store(store).delete(name)


@pytest.fixture(autouse=True)
def deltas_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 1e9)


def test_a_backup_deleted_from_one_store_is_named_and_the_newest_still_loads(
        tmp_path: Path) -> None:
    cfg = two_vaults(tmp_path)
    files = records(tmp_path, 3)
    ids = [put(cfg, p)[0] for p in files]
    newest = max(names_by_seq(cfg, "vault"))
    delete(cfg, "vault", names_by_seq(cfg, "vault")[newest])  # the attack of the finding
    shutil.rmtree(tmp_path / "state")
    code, out, err = cli(cfg, "recover")
    assert f"store vault: its newest manifest backup is #{newest - 1}, older than #{newest}" \
        in err and f"#{newest}" in out
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["manifest_seq"] == newest and res["files"] == 3
    assert any("store vault" in w and f"#{newest}" in w for w in res["warnings"])
    restores(cfg, ids[-1], files[-1], tmp_path / "out")


def test_a_gap_in_the_chain_refuses_the_older_state_unless_asked(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 4)
    for p in files:
        put(cfg, p)
    by_seq = names_by_seq(cfg, "vault")
    assert sorted(by_seq) == [1, 2, 3, 4]
    delete(cfg, "vault", by_seq[3])
    shutil.rmtree(tmp_path / "state")
    code, out, err = cli(cfg, "recover", expect=2)
    assert "recover refused" in err and "#4" in err and "ends at #2" in err
    assert "backup #4 needs #3" in err and len(err.strip().splitlines()) <= 3
    with open_archive(load_config(cfg)) as v:
        assert not v.db.has_files()  # nothing was written
    res = cli_json(cfg, "recover", "--accept-older")
    assert res["manifest_seq"] == 2 and res["files"] == 2
    assert any("ends at #2" in w for w in res["warnings"])
    # the next backup is a checkpoint above every number seen: a later recover takes it
    put(cfg, records(tmp_path, 1, start=4)[0])
    assert max(names_by_seq(cfg, "vault")) == 5
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["manifest_seq"] == 5 and res["files"] == 3 and res["chain"] == [5]


def _found(seq: int, kind: str, prev: tuple[int, str] | None, store: str = "s1",
           digest: str | None = None) -> Found:
    doc = {"seq": seq, "kind": kind, "base": seq if kind == "checkpoint" else 1,
           "prev": {"seq": prev[0], "digest": prev[1]} if prev else None}
    return Found(store, f"n{seq}", digest or f"{seq:064x}", 100, doc)


def test_choose_names_gaps_replaced_backups_and_a_known_newer_seq() -> None:
    d = lambda s: f"{s:064x}"  # noqa: E731
    chain = [_found(1, "checkpoint", None), _found(2, "delta", (1, d(1))),
             _found(3, "delta", (2, d(2)))]
    ok = choose(chain, ["s1"])
    assert [f.seq for f in ok.chain] == [1, 2, 3] and not ok.warnings and not ok.refusal
    # a predecessor replaced by another with its number: the digest does not match
    forged = [chain[0], _found(2, "delta", (1, d(1)), digest="e" * 64), chain[2]]
    got = choose(forged, ["s1"])
    assert [f.seq for f in got.chain] == [1, 2] and "#3 needs #2" in got.warnings[0]
    assert "newest complete chain ends at #2" in got.refusal
    # a store behind the other
    both = chain + [_found(1, "checkpoint", None, "s2"), _found(2, "delta", (1, d(1)), "s2")]
    got = choose(both, ["s1", "s2"])
    assert [f.seq for f in got.chain] == [1, 2, 3] and not got.refusal
    assert got.warnings == ["store s2: its newest manifest backup is #2, older than #3 on "
                            "another store (a backup missing or rolled back there)"]
    # the device knows it backed up #5: loading #3 is going back in time
    assert "last backed up #5" in choose(chain, ["s1"], known_seq=5).refusal
    assert choose([chain[1]], ["s1"]) is None  # no checkpoint: no chain


def _replace_with(cfg: Path, doc: dict) -> None:
    with open_archive(load_config(cfg)) as v:
        vault = v.store("vault")
        for n in list(vault.list(manifest.PREFIX)):
            vault.delete(n)
        vault.put_bytes(f"{manifest.PREFIX}{new_object_name()}", manifest.seal(v.key, doc))


@pytest.mark.parametrize("where, value, needle", [
    ("name", "../../../x", "files.0.name"),
    ("file_id", "../../../../evil", "files.0.file_id"),
    ("name", "..", "files.0.name"),
    ("name", "a\0b", "files.0.name"),
    ("size", -5, "files.0.size"),
])
def test_a_sealed_backup_with_a_bad_entry_is_refused_in_one_line(
        tmp_path: Path, where: str, value, needle: str) -> None:
    cfg = local_config(tmp_path, "replicate")
    put(cfg, records(tmp_path, 1)[0])
    ((doc, _, _),), _ = manifest_objects(cfg)
    doc = whole(doc)  # a checkpoint with its entries inline (format 5), tampered
    doc["files"][0][where] = value
    _replace_with(cfg, doc)
    shutil.rmtree(tmp_path / "state")
    _, _, err = cli(cfg, "recover", expect=2)
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(seq="x"), "seq"),
    (lambda d: d.pop("files"), "files"),
    (lambda d: d["files"][0].pop("objects"), "files.0.objects"),
    (lambda d: d.update(files={"a": 1}), "files"),
])
def test_a_malformed_document_is_refused_in_one_line(tmp_path: Path, change, needle) -> None:
    cfg = local_config(tmp_path, "replicate")
    put(cfg, records(tmp_path, 1)[0])
    ((doc, _, _),), _ = manifest_objects(cfg)
    doc = whole(doc)
    change(doc)
    _replace_with(cfg, doc)
    shutil.rmtree(tmp_path / "state")
    _, _, err = cli(cfg, "recover", expect=2)
    assert f"malformed at {needle}" in err and len(err.strip().splitlines()) == 1
    _replace_with(cfg, [1, 2])  # a list body
    _, _, err = cli(cfg, "recover", expect=2)
    assert "malformed" in err and len(err.strip().splitlines()) == 1


def test_a_missing_container_is_skipped_and_reported_and_a_failed_recover_can_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 3)
    ids = [put(cfg, f)[0] for f in files]  # a pack each: deleting one loses one container
    with open_archive(load_config(cfg)) as v:
        (gone,) = [o for o in v.db.objects(ids[1], role="private")]
        v.store(gone.store).delete(gone.name)
    shutil.rmtree(tmp_path / "state")

    def broken(self, *a, **k):
        raise DispersiondError("the state disk is full")

    monkeypatch.setattr(StateDB, "clear_manifest_changes", broken)
    code, _, err = cli(cfg, "recover", expect=None)
    assert code != 0
    monkeypatch.undo()
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 1e9)
    with open_archive(load_config(cfg)) as v:
        assert not v.db.has_files()  # all or nothing: the failed recover wrote no row
    res = cli_json(cfg, "recover")  # a second recover after a failed one works
    assert res["files"] == 3 and [m["file_id"] for m in res["missing_containers"]] == [ids[1]]
    for fid, path in ((ids[0], files[0]), (ids[2], files[2])):
        restores(cfg, fid, path, tmp_path / f"out-{fid}")
    code, _, err = cli(cfg, "restore", ids[1], "--to", str(tmp_path / "lost"), expect=None)
    assert code != 0 and "private container" in err
