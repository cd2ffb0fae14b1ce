"""Segmented checkpoints (docs/FORMAT.md §4.1): a root listing sealed segments, only the
changed segments sealed again, shared segments kept by pruning and unreferenced ones
deleted, forget's erasure, rotate-key, a missing, swapped or altered segment caught,
a crash between the segments and the root resumed, and format-5 archives written by the
previous build still recovered."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sqlite3
import tarfile
from pathlib import Path

import pytest

from dispersiond import manifest
from dispersiond.archive import open_archive
from dispersiond.config import load_config
from dispersiond.errors import WrongKey
from dsp import ROOT, cli, cli_json, local_config, manifest_objects, put, restores
from packed import unaccounted
from test_manifest_chain import records

SEG = 3  # files per segment in these tests (1,000 in use)
#: The last build whose manifest backups were format 5 (whole checkpoints), schema 5.
FORMAT_5_BUILD = "4794665e7b2c885f10a27ad14da30f7a07f56a9c"


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "SEGMENT_FILES", SEG)


@pytest.fixture
def checkpoints_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backup after the first is a checkpoint."""
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 0.0)


@pytest.fixture
def deltas_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 1e9)


def roots(cfg: Path) -> list[dict]:
    return [d for d, _, _ in manifest_objects(cfg)[0] if d["kind"] == "checkpoint"]


def listed(doc: dict) -> dict[int, str]:
    """index -> digest of the segments a root lists."""
    return {r["index"]: r["digest"] for r in doc["segments"]}


def names_on(cfg: Path, store: str = "vault") -> set[str]:
    with open_archive(load_config(cfg)) as v:
        return set(v.store(store).list(manifest.PREFIX))


def test_only_the_segments_that_changed_are_sealed_again(tmp_path: Path,
                                                         checkpoints_only) -> None:
    cfg = local_config(tmp_path, "replicate")
    ids = put(cfg, *records(tmp_path, 7))
    (first,) = roots(cfg)
    assert [r["files"] for r in first["segments"]] == [3, 3, 1]
    assert {e["file_id"] for e in first["files"]} == set(ids)  # the segments' entries
    with open_archive(load_config(cfg)) as v:  # the root itself holds none
        s = v.store("vault")
        raw = [manifest.open_sealed(v.key, s.get_bytes(n)) for n in s.list(manifest.PREFIX)]
    assert [len(d["files"]) for d in raw if d["kind"] == "checkpoint"] == [0]
    ids += put(cfg, *records(tmp_path, 1, start=7))
    second = roots(cfg)[-1]
    assert [r["files"] for r in second["segments"]] == [3, 3, 2]
    # the full segments are shared: the same objects, not uploaded again
    assert listed(second)[0] == listed(first)[0] and listed(second)[1] == listed(first)[1]
    assert listed(second)[2] != listed(first)[2]
    segments = manifest_objects(cfg)[1]
    assert segments[listed(second)[0]][0]["seq"] == first["seq"]
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 8 and res["warnings"] == [] and res["chain"] == [second["seq"]]
    restores(cfg, ids[0], tmp_path / "records" / "lab-00000.csv", tmp_path / "out")


def test_recover_reads_root_segments_and_deltas_and_the_chain_goes_on(
        tmp_path: Path, deltas_only, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 9)
    ids = put(cfg, *files[:7])
    for p in files[7:]:
        ids += put(cfg, p)
    (root,) = roots(cfg)
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 9 and res["chain"] == [root["seq"], root["seq"] + 1, root["seq"] + 2]
    for fid, p in zip(ids, files):
        restores(cfg, fid, p, tmp_path / f"out-{fid}")
    # the recovered device knows its segments: its next checkpoint re-seals only the
    # last one (the deltas' files and the new one join it) and shares the others
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 0.0)
    ids += put(cfg, *records(tmp_path, 1, start=9))
    after = roots(cfg)[-1]
    assert [r["files"] for r in after["segments"]] == [3, 3, 3, 1]
    assert listed(after)[0] == listed(root)[0] and listed(after)[1] == listed(root)[1]
    with open_archive(load_config(cfg)) as v:
        assert unaccounted(v) == {}
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 10


def _two_generations(tmp: Path) -> tuple[Path, dict, dict]:
    cfg = local_config(tmp, "replicate")
    put(cfg, *records(tmp, 4))  # segments of 3 and 1
    put(cfg, *records(tmp, 1, start=4))  # the second segment sealed again (2 files)
    old, new = roots(cfg)
    assert listed(old)[0] == listed(new)[0] and listed(old)[1] != listed(new)[1]
    return cfg, old, new


def _name_of(cfg: Path, digest: str) -> str:
    return next(n for n in names_on(cfg) if n == manifest.PREFIX + digest[:32])


def _get(cfg: Path, name: str) -> bytes:
    with open_archive(load_config(cfg)) as v:
        return v.store("vault").get_bytes(name)


def _set(cfg: Path, name: str, blob: bytes | None) -> None:
    with open_archive(load_config(cfg)) as v:
        v.store("vault").delete(name)
        if blob is not None:
            v.store("vault").put_bytes(name, blob)


@pytest.mark.parametrize("attack", ["missing", "swapped", "altered"])
def test_a_missing_swapped_or_altered_segment_is_caught(tmp_path: Path, checkpoints_only,
                                                        attack: str) -> None:
    cfg, old, new = _two_generations(tmp_path)
    target = _name_of(cfg, listed(new)[1])
    if attack == "missing":
        _set(cfg, target, None)
    elif attack == "swapped":  # the older, validly sealed segment 1 in its place
        _set(cfg, target, _get(cfg, _name_of(cfg, listed(old)[1])))
    else:
        blob = bytearray(_get(cfg, target))
        blob[-1] ^= 1
        _set(cfg, target, bytes(blob))
    shutil.rmtree(tmp_path / "state")
    _, _, err = cli(cfg, "recover", expect=2)
    assert f"checkpoint #{new['seq']} lists segment 1, which is on no store" in err
    assert f"the newest manifest backup is #{new['seq']} but it cannot be loaded" in err
    res = cli_json(cfg, "recover", "--accept-older")  # the older checkpoint is whole
    assert res["files"] == 4 and res["chain"] == [old["seq"]]
    assert any("failed authentication" in e for e in res["unreadable_backups"]) == (
        attack == "altered")


def test_a_segment_missing_everywhere_fails_with_the_reason(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    put(cfg, *records(tmp_path, 4))
    (root,) = roots(cfg)
    _set(cfg, _name_of(cfg, listed(root)[0]), None)
    shutil.rmtree(tmp_path / "state")
    _, _, err = cli(cfg, "recover", expect=2)
    assert "no readable manifest backup" in err and "lists segment 0" in err


def test_pruning_keeps_shared_segments_and_deletes_unreferenced_ones(
        tmp_path: Path, checkpoints_only) -> None:
    cfg = local_config(tmp_path, "replicate")
    put(cfg, *records(tmp_path, 3))  # segment 0: full, shared by every later root
    for i in range(3, 8):
        put(cfg, *records(tmp_path, 1, start=i))
    backups, segments = manifest_objects(cfg)
    kept = [d for d, _, _ in backups]
    assert len(kept) == manifest.KEEP_BACKUPS and all(d["kind"] == "checkpoint" for d in kept)
    wanted = {manifest.PREFIX + dg[:32] for d in kept for dg in listed(d).values()}
    on_store = names_on(cfg)
    assert on_store == wanted | {n for _, _, n in backups}  # nothing unreferenced is left
    assert segments[listed(kept[0])[0]][0]["seq"] == 1  # older than every kept root
    assert len(segments) == len({dg for d in kept for dg in listed(d).values()})
    with open_archive(load_config(cfg)) as v:
        assert unaccounted(v) == {} and v.db.trashed() == []
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 8


def _entries(cfg: Path, store: str = "vault") -> list[str]:
    """Every entry in every manifest object on `store`, as text (the audit rows, which
    name a forgotten file's id with the forget, left out)."""
    with open_archive(load_config(cfg)) as v:
        s = v.store(store)
        docs = [manifest.open_sealed(v.key, s.get_bytes(n)) for n in s.list(manifest.PREFIX)]
    return [json.dumps(d["files"]) + json.dumps(d.get("removed", [])) for d in docs]


def test_forget_erases_the_file_from_every_segment_on_the_trusted_store(
        tmp_path: Path, checkpoints_only, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = local_config(tmp_path, "replicate")
    for p in records(tmp_path, 7):  # a pack each: forgetting one moves no other entry
        put(cfg, p)
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 1e9)
    put(cfg, *records(tmp_path, 1, start=7))  # a delta on the last checkpoint
    first = roots(cfg)[-1]
    segments = manifest_objects(cfg)[1]
    entry = segments[listed(first)[1]][0]["files"][0]
    victim = entry["file_id"]
    assert any(victim in p for p in _entries(cfg))
    cli(cfg, "forget", victim)
    ((root, _, _),), segments = manifest_objects(cfg)
    assert root["kind"] == "checkpoint" and victim not in {e["file_id"] for e in root["files"]}
    assert len(root["files"]) == 7
    assert not any(victim in p for p in _entries(cfg))  # in no object on the store
    assert not any(entry["prf_digest"] in p for p in _entries(cfg))
    assert listed(root)[0] == listed(first)[0]  # untouched segment: shared, not re-sent
    assert set(segments) == set(listed(root).values())  # the old segment 1 is gone
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 7


def test_rotate_key_seals_every_segment_again(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 5)
    ids = put(cfg, *files)
    old_key = (tmp_path / "master.key").read_bytes()
    before = names_on(cfg)
    cli_json(cfg, "rotate-key")
    after = names_on(cfg)
    assert after and not before & after
    with open_archive(load_config(cfg)) as v:
        s = v.store("vault")
        for n in after:
            manifest.open_sealed(v.key, s.get_bytes(n))  # the new key opens each
            with pytest.raises(WrongKey):
                manifest.open_sealed(old_key, s.get_bytes(n))
    (root,) = roots(cfg)
    assert [r["files"] for r in root["segments"]] == [3, 2]
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 5
    restores(cfg, ids[0], files[0], tmp_path / "out")


def test_a_kill_between_the_segments_and_the_root_resumes(tmp_path: Path) -> None:
    from crashpoint import Stopped

    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path, 2)
    child = Stopped(cfg, ["put", str(files[0])], at="dispersiond.ops.backup:_put_all",
                    when="after", nth=1).wait()  # the segments are on the vault, no root
    child.kill()
    orphans = names_on(cfg)
    assert len(orphans) == 1
    with open_archive(load_config(cfg)) as v:
        assert manifest.open_sealed(v.key, v.store("vault").get_bytes(
            next(iter(orphans))))["kind"] == "segment"
        assert v.db.backups("vault") == []
    put(cfg, files[1])  # the next backup deletes what the dead one put, then lands
    assert not orphans & names_on(cfg)
    with open_archive(load_config(cfg)) as v:
        assert unaccounted(v) == {} and v.db.trashed() == []
        assert not v.db.stale_manifest_objects()
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 2


# ------------------------------------------------- format 5, by the previous build

def _format_5_build(tmp: Path) -> Path:
    """The package of the last build that wrote format 5, unpacked beside this one."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", FORMAT_5_BUILD, "dispersiond",
                              "backends"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise AssertionError(f"the format-5 build {FORMAT_5_BUILD[:12]} could not be read "
                             "from git: run the suite in a full git checkout of the project "
                             f"({exc})") from None
    dest = tmp / "format5-build"
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    here = ROOT / "dispersiond" / "codec"
    if (dest / "dispersiond/codec/_splitc.c").read_bytes() == (here / "_splitc.c").read_bytes():
        for so in here.glob("_splitc*.so"):
            shutil.copy(so, dest / "dispersiond" / "codec" / so.name)
    return dest


def _old_put(build: Path, cfg: Path, *paths: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(build)}
    r = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "put",
                        *map(str, paths)], env=env, cwd=build, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr


def _format_5_archive(tmp: Path, n: int) -> tuple[Path, Path, list[Path]]:
    """An archive whose first three of `n` records the format-5 build put: its package,
    the config and the records."""
    build = _format_5_build(tmp)
    cfg = local_config(tmp, "replicate")
    files = records(tmp, n)
    _old_put(build, cfg, *files[:3])
    return build, cfg, files


def _formats(cfg: Path) -> list[tuple[int, str, bool]]:
    with open_archive(load_config(cfg)) as v:
        s = v.store("vault")
        docs = [manifest.open_sealed(v.key, s.get_bytes(n)) for n in s.list(manifest.PREFIX)]
    return sorted((d["format"], d.get("kind", "?"), "segments" in d) for d in docs)


def test_a_format_5_archive_of_the_previous_build_recovers_and_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build, cfg, files = _format_5_archive(tmp_path, 5)
    _old_put(build, cfg, files[3])  # a whole checkpoint and a delta, format 5
    assert [(f, s) for f, _, s in _formats(cfg)] == [(5, False), (5, False)]
    shutil.copytree(tmp_path / "state", tmp_path / "state5")  # schema 5
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 4 and res["warnings"] == []
    # the next checkpoint is the first segmented one: every segment, every file
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 0.0)
    put(cfg, files[4])
    root = roots(cfg)[-1]
    assert [r["files"] for r in root["segments"]] == [3, 2] and len(root["files"]) == 5
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 5


def test_a_schema_5_state_migrates_and_its_next_checkpoint_is_segmented(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, cfg, files = _format_5_archive(tmp_path, 4)
    db_path = tmp_path / "state" / "state.db"
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("5",)
    assert not db.execute("SELECT name FROM sqlite_master WHERE name='manifest_segments'"
                          ).fetchall()
    db.close()
    with open_archive(load_config(cfg)) as v:  # opening it migrates
        assert v.db.get_meta("schema") == "7" and v.db.segmented_with() is None
        assert v.db.chain_tip() is not None and v.db.segment_rows() == []
    monkeypatch.setattr(manifest, "CHECKPOINT_FRACTION", 0.0)
    put(cfg, files[3])
    root = roots(cfg)[-1]
    assert root["format"] == 6 and [r["files"] for r in root["segments"]] == [3, 1]
    assert root["prev"] is not None  # the chain goes on from the format-5 backup
    with open_archive(load_config(cfg)) as v:
        assert v.db.segmented_with() is not None and unaccounted(v) == {}
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 4


def test_the_scale_bench_measures_whole_generations(tmp_path: Path) -> None:
    from dispersiond.research import scale_bench

    r = scale_bench.bench_size(20, tmp_path, measured=8)
    assert r["checkpoints"] >= 1 and r["measured_records"] >= 8
    assert r["recovered"] > 20 + r["measured_records"]  # the warm-up's records too
    # each record pays its delta and a bounded share of checkpoints (FORMAT.md §4)
    assert r["delta_bytes"] < r["amortised_bytes"] < 4 * r["delta_bytes"]
    assert r["recover_segments"] >= 7 and r["recover_objects"] > r["recover_segments"]


def test_the_daemons_sweep_counts_segments_as_recorded(tmp_path: Path) -> None:
    """The daemon deletes manifest objects the state does not record (a crash's): the
    segments of a landed checkpoint are recorded, a dead backup's are not."""
    from dispersiond.ops.backup import _backups

    cfg = local_config(tmp_path, "replicate")
    put(cfg, *records(tmp_path, 4))
    with open_archive(load_config(cfg)) as v:
        recorded = {n for _, n in _backups(v, "vault")}
        assert recorded == set(v.store("vault").list(manifest.PREFIX)) and len(recorded) == 3


def test_a_burst_too_large_for_a_delta_goes_straight_to_a_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delta of a burst would be thrown away for the checkpoint it outgrows: it is
    not built (its rows, entries and text were the backup's peak memory)."""
    monkeypatch.setattr(manifest, "SEGMENT_FILES", 1000)
    cfg = local_config(tmp_path, "replicate")
    put(cfg, *records(tmp_path, 300))  # the first checkpoint
    built: list[int] = []
    real = manifest.delta

    def delta(db, seq, base, prev, changed, *rest):
        built.append(len(changed))
        return real(db, seq, base, prev, changed, *rest)

    monkeypatch.setattr(manifest, "delta", delta)
    put(cfg, *records(tmp_path, 1, start=300))  # one more record: a delta, as always
    assert built == [1] and [d["kind"] for d, _, _ in manifest_objects(cfg)[0]][-1] == "delta"
    burst = records(tmp_path, 600, start=301)
    ids = put(cfg, *burst)  # a burst twice the archive
    assert built == [1]  # no delta was built for the burst ...
    newest = manifest_objects(cfg)[0][-1][0]
    assert newest["kind"] == "checkpoint"  # ... the checkpoint was, and holds them all
    assert set(ids) <= {e["file_id"] for e in newest["files"]}
    restores(cfg, ids[-1], burst[-1], tmp_path / "out.csv")


def test_each_segment_is_put_before_the_next_is_sealed(tmp_path: Path, checkpoints_only,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint holds one sealed segment at a time: a burst's checkpoint of 30
    segments held 6 MB of them at once."""
    from dispersiond.ops import backup

    steps: list[str] = []
    real_seal, real_put_all = manifest.seal, backup._put_all

    def seal(key, doc):
        steps.append(f"seal {doc['kind']}")
        return real_seal(key, doc)

    def put_all(v, store, blobs):
        steps.extend("put" for _ in blobs)
        return real_put_all(v, store, blobs)

    monkeypatch.setattr(manifest, "seal", seal)
    monkeypatch.setattr(backup, "_put_all", put_all)
    cfg = local_config(tmp_path, "replicate")
    put(cfg, *records(tmp_path, 7))
    first = steps.index("seal segment")
    assert steps[first:first + 8] == ["seal segment", "put"] * 3 + ["seal checkpoint", "put"]


def test_a_private_store_that_misses_a_segment_gets_no_root_and_catches_up(
        tmp_path: Path, checkpoints_only, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trusted stores; one refuses the checkpoint's second segment. It is then sent
    nothing more of that checkpoint, so no root there names a segment it lacks; the
    next checkpoint seals for it what it lacks, and recover finds every file."""
    from dispersiond.ops import backup
    from dsp import write_config

    stores = [{"name": f"cloud-{c}", "type": "local", "trust": "untrusted",
               "path": str(tmp_path / f"cloud-{c}")} for c in "ab"]
    stores += [{"name": n, "type": "local", "trust": "trusted", "path": str(tmp_path / n)}
               for n in ("vault", "vault-b")]
    cfg = write_config(tmp_path, stores, {"mode": "replicate", "stores": ["cloud-a", "cloud-b"]},
                       {"min_trust": "trusted", "stores": ["vault", "vault-b"]})
    real_put_all = backup._put_all
    refused: list[str] = []
    segments_sent = 0

    def put_all(v, store, blobs):
        nonlocal segments_sent
        if store == "vault-b" and not refused and [
                manifest.open_sealed(v.key, b)["kind"] for b in blobs.values()] == ["segment"]:
            segments_sent += 1
            if segments_sent == 2:  # the checkpoint's second segment
                refused.extend(blobs)
                return []
        return real_put_all(v, store, blobs)

    monkeypatch.setattr(backup, "_put_all", put_all)
    put(cfg, *records(tmp_path, 7))
    assert refused

    def consistent(store: str) -> bool:
        """Every root on `store` lists only segments `store` holds."""
        backups, segments = manifest_objects(cfg, store)
        return all(r["digest"] in segments for d, _, _ in backups
                   for r in d.get("segments") or [])

    assert consistent("vault") and consistent("vault-b")
    monkeypatch.setattr(backup, "_put_all", real_put_all)
    put(cfg, *records(tmp_path, 1, start=7))
    assert consistent("vault") and consistent("vault-b")
    newest = max((d for d, _, _ in manifest_objects(cfg, "vault-b")[0]), key=lambda d: d["seq"])
    assert newest["kind"] == "checkpoint" and sum(r["files"] for r in newest["segments"]) == 8
    shutil.rmtree(tmp_path / "state")
    res = cli_json(cfg, "recover")
    assert res["files"] == 8 and res["warnings"] == []
