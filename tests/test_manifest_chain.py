"""Incremental manifest backups: deltas sized by the batch, chained to their predecessor,
whole generations pruned, every older format still recovered."""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from dispersiond import manifest
from dispersiond.config import load_config
from dispersiond.placement import new_object_name
from dispersiond.state.schema import ENTRY_COLUMNS, OBJECT_COLUMNS
from dispersiond.archive import open_archive
from dsp import cli, cli_json, local_config, manifest_objects, put, restores, whole


def records(tmp: Path, count: int, start: int = 0) -> list[Path]:
    """Small distinct records (a clinic's lab results arrive like this)."""
    d = tmp / "records"
    d.mkdir(exist_ok=True)
    out = []
    for i in range(start, start + count):
        p = d / f"lab-{i:05d}.csv"
        p.write_bytes(f"patient,{i}\n".encode() + os.urandom(2000))
        out.append(p)
    return out


def backups(cfg: Path, store: str = "vault") -> list[tuple[dict, bytes, str]]:
    """(document, sealed bytes, name) of every backup on `store`, by seq (a segmented
    checkpoint with its segments' entries)."""
    return manifest_objects(cfg, store)[0]


def cost(cfg: Path, doc: dict, blob: bytes, store: str = "vault") -> int:
    """What a checkpoint uploaded: its root and the segments it sealed."""
    segments = manifest_objects(cfg, store)[1]
    return len(blob) + sum(len(segments[r["digest"]][1]) for r in doc.get("segments") or []
                           if segments[r["digest"]][0]["seq"] == doc["seq"])


@pytest.fixture
def deltas_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No checkpoint by size (small test archives would take one every time)."""
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 1e9)


def test_the_change_log_follows_every_column_of_an_entry() -> None:
    assert ENTRY_COLUMNS == tuple(manifest.ROW_FIELD.get(k, k) for k in manifest.FILE_FIELDS)
    assert OBJECT_COLUMNS == (*manifest.OBJECT_FIELDS, "pack_digest")  # optional in entries


def test_each_backup_is_a_delta_of_its_batch_chained_to_the_one_before(
        tmp_path: Path, deltas_only) -> None:
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 24)
    ids = put(cfg, *files[:20])  # one batch (its members' entries share pack names)
    for p in files[20:]:
        ids += put(cfg, p)
    got = backups(cfg)
    kinds = [d["kind"] for d, _, _ in got]
    assert kinds == ["checkpoint", "delta", "delta", "delta", "delta"]
    for (prev, blob, _), (doc, _, _) in zip(got, got[1:]):
        assert doc["prev"] == {"seq": prev["seq"], "digest": manifest.blob_digest(blob)}
        assert doc["base"] == got[0][0]["seq"] and len(doc["files"]) == 1
    # a one-record delta does not grow with the archive; a checkpoint does
    sizes = [len(b) for _, b, _ in got[1:]]
    first = cost(cfg, got[0][0], got[0][1])
    assert max(sizes) < 1.2 * min(sizes) and max(sizes) < first / 3
    with open_archive(load_config(cfg)) as v:
        assert v.db.manifest_changes() == ([], 0)
        assert len(manifest.seal(v.key, manifest.snapshot(v.db, 99))) > 1.1 * first
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 24 and res["chain"] == [d["seq"] for d, _, _ in got]
    assert res["warnings"] == [] and res["missing_containers"] == []
    restores(cfg, ids[-1], files[-1], tmp_path / "out")
    restores(cfg, ids[0], files[0], tmp_path / "out0")
    # the recovered device continues the chain
    ids += put(cfg, *records(tmp_path, 1, start=24))
    doc, _, _ = backups(cfg)[-1]
    assert doc["kind"] == "delta" and doc["prev"]["seq"] == res["manifest_seq"]


def test_a_forget_is_a_removal_and_leaves_one_lone_checkpoint(tmp_path: Path,
                                                              deltas_only) -> None:
    cfg = local_config(tmp_path, "replicate")
    ids = [put(cfg, p)[0] for p in records(tmp_path, 3)]
    assert [d["kind"] for d, _, _ in backups(cfg)] == ["checkpoint", "delta", "delta"]
    cli(cfg, "forget", ids[1])
    (doc, _, _), = backups(cfg)
    assert doc["kind"] == "checkpoint" and {e["file_id"] for e in doc["files"]} == {
        ids[0], ids[2]}
    # a delta carries the removal of a forgotten file when no checkpoint follows it
    state = manifest.replay([
        doc, {**doc, "kind": "delta", "seq": doc["seq"] + 1, "files": [], "removed": [ids[0]],
              "audit": []}])
    assert set(state.files) == {ids[2]}
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 2


def test_pruning_keeps_whole_generations(tmp_path: Path, deltas_only,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "CHECKPOINT_EVERY", 2)
    cfg = local_config(tmp_path, "replicate")
    for p in records(tmp_path, 11):
        put(cfg, p)
    got = backups(cfg)
    bases = sorted({d["base"] for d, _, _ in got})
    assert len(bases) == manifest.KEEP_BACKUPS
    for base in bases:  # each kept generation is complete: its checkpoint and deltas
        seqs = [d["seq"] for d, _, _ in got if d["base"] == base]
        assert seqs == list(range(base, base + len(seqs)))
        assert next(d for d, _, _ in got if d["seq"] == base)["kind"] == "checkpoint"
    with open_archive(load_config(cfg)) as v:
        assert {n for _, _, n in got} == {n for _, n in v.db.backups("vault")}
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 11


def test_a_checkpoint_follows_once_the_deltas_outgrow_a_share_of_it(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    put(cfg, *records(tmp_path, 10))
    for p in records(tmp_path, 8, start=10):
        put(cfg, p)
    got = backups(cfg)
    ckpt = [d["seq"] for d, _, _ in got if d["kind"] == "checkpoint"]
    assert len(ckpt) >= 2  # 8 one-record deltas exceed half of a 10-record checkpoint
    # the deltas between two checkpoints stay under a share of what the second uploaded
    # (its root and the segments it re-sealed); one more would have gone over
    for a, b in zip(ckpt, ckpt[1:]):
        chain = [len(blob) for d, blob, _ in got if d["base"] == a and d["seq"] > a]
        second = next((d, blob) for d, blob, _ in got if d["seq"] == b)
        assert 0 < sum(chain) <= 1.1 * manifest.CHECKPOINT_FRACTION * cost(cfg, *second)


def _older(doc: dict, fmt: int) -> dict:
    """The newest checkpoint as an older build wrote it."""
    old = {k: v for k, v in doc.items() if k not in ("kind", "base", "prev", "removed")}
    if fmt <= 2:
        old.pop("sender_key", None)
    if fmt == 1:
        old["files"] = [{**{k: v for k, v in e.items() if k not in ("digest", "prf_digest",
                                                                     "digest_alg")},
                         "sha256": e["digest"], "prf_sha256": e["prf_digest"],
                         "objects": [{**{k: v for k, v in o.items() if k != "digest"},
                                      "sha256": o["digest"]} for o in e["objects"]]}
                        for e in doc["files"]]
    return {**old, "format": fmt}


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_every_older_format_still_recovers(tmp_path: Path, fmt: int) -> None:
    cfg = local_config(tmp_path, "replicate", digest="sha256")
    files = records(tmp_path, 3)
    ids = put(cfg, *files)
    (doc, _, _), = backups(cfg)
    with open_archive(load_config(cfg)) as v:
        vault = v.store("vault")
        for n in list(vault.list(manifest.PREFIX)):
            vault.delete(n)
        vault.put_bytes(f"{manifest.PREFIX}{new_object_name()}",
                        manifest.seal(v.key, _older(whole(doc), fmt)))
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 3 and res["warnings"] == []
    for fid, path in zip(ids, files):
        restores(cfg, fid, path, tmp_path / f"out-{fid}")
    put(cfg, *records(tmp_path, 1, start=3))  # the next backup starts a new chain
    assert backups(cfg)[-1][0]["kind"] == "checkpoint"


def test_a_schema_3_database_is_migrated_and_keeps_backing_up(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 3)
    (fid, _) = put(cfg, *files[:2])
    put(cfg, files[2])
    cli(cfg, "restore", fid, "--to", str(tmp_path / "out"))  # an audit entry
    db_path = tmp_path / "state" / "state.db"
    db = sqlite3.connect(db_path)
    with db:  # what schema 3 left: no chain, no change log, no generations, a bare head
        db.execute("DROP TABLE manifest_chain")
        db.execute("DROP TABLE manifest_changes")
        db.execute("ALTER TABLE manifest_backups DROP COLUMN base")
        head = db.execute("SELECT value FROM meta WHERE key='audit_head'").fetchone()[0]
        db.execute("UPDATE meta SET value=? WHERE key='audit_head'",
                   (":".join(head.split(":")[:2]),))
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
    db.close()
    with open_archive(load_config(cfg)) as v:
        assert v.db.get_meta("schema") == "7" and v.db.chain_tip() is None
        assert v.db.get_meta("audit_head").endswith(":legacy")
        assert [(b, s) for b, s, _ in v.db.backup_generations("vault")] == [(1, 1), (2, 2)]
    assert cli_json(cfg, "audit", "verify")["ok"]  # a head from before heads had a MAC
    put(cfg, *records(tmp_path, 1, start=3))
    doc = backups(cfg)[-1][0]
    assert doc["kind"] == "checkpoint" and doc["prev"] is None and doc["seq"] == 3
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 4
