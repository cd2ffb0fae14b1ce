"""`restore --all`: many files at once, filtered, in parallel, each verified, failures alone."""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from backends import open_store
from dispersiond.config import load_config
from dispersiond.state import StateDB
from dsp import cli, cli_json, local_config, put, write_config


def records(folder: Path, n: int, prefix: str = "rec", suffix: str = ".json") -> list[Path]:
    """`n` files of varied sizes and random content (a few bytes up to ~40 KB)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{prefix}-{i:03d}{suffix}"
        p.write_bytes(os.urandom(1 + (i * 7919) % 40000))
        out.append(p)
    return out


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def same_bytes(originals: list[Path], out: Path) -> None:
    for f in originals:
        assert digest(out / f.name) == digest(f), f.name


def test_thirty_files_restore_bit_exact_in_parallel(tmp_path):
    cfg = local_config(tmp_path)
    files = records(tmp_path / "in", 32)
    put(cfg, *files)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(cfg, "restore", "--all", "--to", str(out), "--jobs", "6")
    same_bytes(files, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)
    total = sum(f.stat().st_size for f in files)
    assert f"restored 32 of 32 files, 0 failed, 0 skipped; {total} bytes" in stdout
    # the parallel restores each appended to the one audit chain, and it holds
    restores = cli_json(cfg, "audit", "ls", "--event", "restore")
    assert len(restores) == 32
    cli(cfg, "audit", "verify")
    # a second run finds everything there: skipped, nothing touched, exit 0
    (out / files[0].name).write_bytes(b"edited")
    code, stdout, _ = cli(cfg, "restore", "--all", "--to", str(out))
    assert "restored 0 of 32 files, 0 failed, 32 skipped" in stdout
    assert (out / files[0].name).read_bytes() == b"edited"
    # --force replaces them, verified again
    cli(cfg, "restore", "--all", "--to", str(out), "--force")
    same_bytes(files, out)


def test_name_pattern_and_since_filters(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    old = records(tmp_path / "a", 4, "scan", ".dcm") + records(tmp_path / "a", 3, "note", ".hl7")
    put(cfg, *old)
    time.sleep(0.05)
    between = datetime.now().isoformat()
    time.sleep(0.05)
    new = records(tmp_path / "b", 2, "scan-new", ".dcm") + records(tmp_path / "b", 2, "lab", ".csv")
    put(cfg, *new)

    def names(*opts: str) -> set[str]:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
        out.mkdir()
        res = cli_json(cfg, "restore", "--all", "--to", str(out), *opts)
        got = {p.name for p in out.iterdir()}
        assert got == {r["name"] for r in res["files"] if r["ok"]}
        return got

    assert names("--name", "*.dcm") == {f.name for f in old[:4] + new[:2]}
    assert names("--since", between) == {f.name for f in new}
    assert names("--since", between, "--name", "scan*") == {f.name for f in new[:2]}
    assert names("--since", "1h") == {f.name for f in old + new}
    assert names("--name", "*.txt") == set()
    _, stdout, _ = cli(cfg, "restore", "--all", "--to", str(tmp_path), "--name", "*.txt")
    assert "no protected file matches" in stdout
    _, _, err = cli(cfg, "restore", "--all", "--to", str(tmp_path), "--since", "last week",
                    expect=2)
    assert "neither an ISO date" in err and "Traceback" not in err
    _, _, err = cli(cfg, "restore", old[0].name, "--since", "1d", expect=2)
    assert "add --all" in err


def test_a_file_with_its_public_objects_gone_fails_alone(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    files = records(tmp_path / "in", 6)
    # the victim put alone: its public objects are its own packs, shared with no one
    ids = put(cfg, *files[:2]) + put(cfg, files[2]) + put(cfg, *files[3:])
    conf = load_config(cfg)
    victim = ids[2]
    db = StateDB(conf.state_path / "state.db")
    for obj in db.objects(victim, role="public"):
        store = next(s for s in conf.stores if s.name == obj.store)
        with open_store("local", obj.store, **store.backend_settings()) as st:
            st.delete(obj.name)
    db.close()
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(cfg, "restore", "--all", "--to", str(out), expect=1)
    failed = [line for line in err.splitlines() if line.startswith("dispersiond: failed:")]
    assert len(failed) == 1 and victim in failed[0] and files[2].name in failed[0]
    assert "no intact public replica" in failed[0] and "Traceback" not in err
    assert not (out / files[2].name).exists()
    same_bytes(files[:2] + files[3:], out)
    assert "restored 5 of 6 files, 1 failed" in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    out2 = tmp_path / "out2"
    out2.mkdir()
    code, stdout, err = cli(cfg, "restore", "--all", "--to", str(out2), "--json", expect=1)
    res = json.loads(stdout)
    assert (res["restored"], res["failed"]) == (5, 1)
    (bad,) = [r for r in res["files"] if not r["ok"]]
    assert bad["file_id"] == victim and "no intact public replica" in bad["error"]
    assert bad["path"] == str(out2 / files[2].name) and not Path(bad["path"]).exists()
    assert len([line for line in err.splitlines() if victim in line]) == 1


def test_duplicate_names_never_overwrite_each_other(tmp_path):
    cfg = local_config(tmp_path)
    first = records(tmp_path / "x", 2, "same")
    second = records(tmp_path / "y", 2, "same")  # the same names, other bytes
    third = records(tmp_path / "z", 1, "same")
    ids = put(cfg, *first) + put(cfg, *second) + put(cfg, *third)
    out = tmp_path / "out"
    out.mkdir()
    res = cli_json(cfg, "restore", "--all", "--to", str(out))
    assert res["restored"] == 5 and res["failed"] == 0
    paths = [Path(r["path"]) for r in res["files"]]
    assert len(set(paths)) == 5 and len(list(out.iterdir())) == 5
    by_id = {r["file_id"]: Path(r["path"]) for r in res["files"]}
    for fid, original in zip(ids, first + second + third):
        assert by_id[fid].read_bytes() == original.read_bytes()
    # the oldest keeps the bare name; the later ones carry their id prefix
    assert by_id[ids[0]].name == "same-000.json"
    assert by_id[ids[2]].name == f"same-000.{ids[2][:8]}.json"
    assert by_id[ids[4]].name == f"same-000.{ids[4][:8]}.json"


def test_json_shape(tmp_path):
    cfg = local_config(tmp_path)
    files = records(tmp_path / "in", 3)
    ids = put(cfg, *files)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = cli(cfg, "restore", "--all", "--to", str(out), "--json")
    res = json.loads(stdout)  # nothing but the one object on stdout
    assert set(res) == {"restored", "failed", "skipped", "bytes", "seconds", "files"}
    assert (res["restored"], res["failed"], res["skipped"]) == (3, 0, 0)
    assert res["bytes"] == sum(f.stat().st_size for f in files) and res["seconds"] >= 0
    assert [r["file_id"] for r in res["files"]] == ids
    for r, f in zip(res["files"], files):
        assert set(r) == {"file_id", "name", "path", "size", "ok", "skipped", "error"}
        assert (r["name"], r["size"], r["ok"], r["error"]) == (f.name, f.stat().st_size, True, None)
        assert Path(r["path"]) == out / f.name


def test_refuses_a_to_that_is_not_a_folder(tmp_path):
    cfg = local_config(tmp_path)
    put(cfg, *records(tmp_path / "in", 2))
    target = tmp_path / "a-file"
    target.write_bytes(b"keep me")
    for to in (target, tmp_path / "missing"):
        _, _, err = cli(cfg, "restore", "--all", "--to", str(to), expect=2)
        assert "is not a folder" in err and "Traceback" not in err
    assert target.read_bytes() == b"keep me" and not (tmp_path / "missing").exists()
    _, _, err = cli(cfg, "restore", "--all", "--to", str(tmp_path), "--jobs", "0", expect=2)
    assert "--jobs 0" in err


def test_bulk_restore_from_the_s3_server(tmp_path, make_store_settings):
    stores = [{"name": f"s3-{c}", "type": "s3", "trust": "untrusted",
               **make_store_settings("s3")} for c in "abc"]
    stores.append({"name": "vault", "type": "local", "trust": "trusted",
                   **make_store_settings("local")})
    cfg = write_config(tmp_path, stores, {"mode": "erasure", "stores": ["s3-a", "s3-b", "s3-c"],
                                          "k": 2}, {"min_trust": "trusted", "stores": ["vault"]})
    files = records(tmp_path / "in", 31)
    put(cfg, *files)
    out = tmp_path / "out"
    out.mkdir()
    res = cli_json(cfg, "restore", "--all", "--to", str(out), "--jobs", "8")
    assert (res["restored"], res["failed"]) == (31, 0)
    same_bytes(files, out)


def test_a_name_that_is_not_utf8_restores_under_its_exact_bytes(tmp_path):
    cfg = local_config(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    raw_name = b"r\xe9sultat.csv"
    src = folder / os.fsdecode(raw_name)
    src.write_bytes(os.urandom(5000))
    put(cfg, src)
    out = tmp_path / "out"
    out.mkdir()
    res = cli_json(cfg, "restore", "--all", "--to", str(out))
    (r,) = res["files"]
    assert r["ok"] and r["name_b64"] == "culzdWx0YXQuY3N2" and r["name"] == "r\\xe9sultat.csv"
    assert (out / os.fsdecode(raw_name)).read_bytes() == src.read_bytes()


def test_since_reads_iso_dates_and_ages():
    from dispersiond.errors import DispersiondError
    from dispersiond.ops.restore import since_timestamp

    assert since_timestamp("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert since_timestamp("1d12h", now=500_000.0) == 500_000.0 - 36 * 3600
    assert since_timestamp("2026-11-30T08:00:00+00:00") == 1_796_025_600.0
    with pytest.raises(DispersiondError, match="neither an ISO date"):
        since_timestamp("yesterday")
