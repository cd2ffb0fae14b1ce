"""Dispersion end to end through the CLI: local stores and the three real emulators."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from backends import open_store
from dispersiond.config import parse_config
from dispersiond.errors import ConfigError
from dsp import cli, cli_json, kept_containers, local_config, real_files, write_config


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def put_all(cfg: Path, files: list[Path]) -> dict[str, str]:
    res = cli_json(cfg, "put", *map(str, files))
    assert res["errors"] == []
    assert [f["state"] for f in res["files"]] == ["done"] * len(files)
    return {f["name"]: f["file_id"] for f in res["files"]}


def restore_all(cfg: Path, ids: dict[str, str], files: list[Path], out: Path) -> None:
    out.mkdir(exist_ok=True)
    for f in files:
        cli(cfg, "restore", ids[f.name], "--to", str(out / f.name))
        assert sha(out / f.name) == sha(f), f.name


# ------------------------------------------------------------------ local stores

@pytest.mark.parametrize("mode", ["erasure", "replicate"])
def test_real_files_round_trip_on_local_stores(tmp_path, mode):
    cfg = local_config(tmp_path, mode)
    files = real_files()
    ids = put_all(cfg, files)
    restore_all(cfg, ids, files, tmp_path / "out")
    listing = cli_json(cfg, "ls")
    assert {r["name"] for r in listing} == {f.name for f in files}
    assert all(r["health"] == "ok" for r in listing)
    assert cli_json(cfg, "verify")["problems"] == []
    assert cli_json(cfg, "verify", "--deep")["ok"] == cli_json(cfg, "verify")["objects"]


def test_dicom_header_goes_into_the_private_container(tmp_path):
    # uncompressed, so that the private share is an eighth of the file itself (with
    # compression it is an eighth of the compressed content: tests/test_compression.py)
    cfg = local_config(tmp_path, compression="off")
    dcm = real_files()[0]
    fid = put_all(cfg, [dcm])[dcm.name]
    from dispersiond.config import load_config
    from dispersiond.state import StateDB

    db = StateDB(load_config(cfg).state_path / "state.db")
    row = db.file(fid)
    assert 132 < row.head_len < 1024  # preamble + DICM + group 0002
    prf = kept_containers(load_config(cfg).state_path)[fid]
    assert len(prf) >= row.head_len + row.size // 8


def test_restore_refuses_to_overwrite_and_names_unknown_files(tmp_path):
    cfg = local_config(tmp_path)
    f = real_files()[3]
    put_all(cfg, [f])
    target = tmp_path / "existing"
    target.write_bytes(b"keep me")
    code, _, err = cli(cfg, "restore", f.name, "--to", str(target), expect=2)
    assert "exists" in err and target.read_bytes() == b"keep me"
    code, _, err = cli(cfg, "restore", "no-such-file", expect=2)
    assert "no protected file matches" in err


def stored_member(cfg: Path, fid: str, store: str):
    """The object row of `fid` on `store` (a packed member: name = its pack's)."""
    from dispersiond.config import load_config
    from dispersiond.state import StateDB

    db = StateDB(load_config(cfg).state_path / "state.db")
    try:
        (obj,) = [o for o in db.objects(fid) if o.store == store]
        return obj
    finally:
        db.close()


def tamper(cfg: Path, store: str, name: str, at: int) -> None:
    """Flip one byte of a stored object in place: same name, same size."""
    raw = next(s for s in yaml.safe_load(cfg.read_text())["stores"] if s["name"] == store)
    with open_store(raw["type"], store, **{k: v for k, v in raw.items()
                                           if k not in ("name", "type", "trust")}) as st:
        data = bytearray(st.get_bytes(name))
        data[at] ^= 0x40
        st.delete(name)
        st.put_bytes(name, bytes(data))


def test_tampered_object_is_never_returned_and_repair_fixes_it(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    f = real_files()[4]
    fid = put_all(cfg, [f])[f.name]
    # flip one byte inside the file's member in every public replica's pack: restore
    # must refuse
    replicas = [stored_member(cfg, fid, s) for s in ("cloud-a", "cloud-b")]
    assert all(o.packed for o in replicas)
    for o in replicas:
        tamper(cfg, o.store, o.name, o.offset + 100)
    out = tmp_path / "out.bin"
    code, _, err = cli(cfg, "restore", fid, "--to", str(out), expect=2)
    assert "digest" in err and not out.exists()
    # one good replica is enough: put one back, restore works, repair fixes the other
    tamper(cfg, replicas[0].store, replicas[0].name, replicas[0].offset + 100)
    cli(cfg, "restore", fid, "--to", str(out))
    assert sha(out) == sha(f)
    rep = cli_json(cfg, "repair", "--deep")
    assert len(rep["repaired"]) == 1 and rep["failed"] == []
    assert [(p["store"], p["members"]) for p in rep["repacked"]] == [("cloud-b", 1)]
    assert stored_member(cfg, fid, "cloud-b").name != replicas[1].name
    assert cli_json(cfg, "verify", "--deep")["problems"] == []


def test_recover_on_a_blank_device(tmp_path):
    cfg = local_config(tmp_path)
    files = real_files()[:4]
    ids = put_all(cfg, files)
    shutil.rmtree(tmp_path / "state")  # the device is lost; config + key survive
    res = cli_json(cfg, "recover")
    assert res["files"] == len(files) and res["private_containers_fetched"] == len(files)
    restore_all(cfg, ids, files, tmp_path / "out")


def test_forget_is_crypto_erasure(tmp_path):
    cfg = local_config(tmp_path)
    a, b = real_files()[3:5]
    ids = put_all(cfg, [a, b])  # one batch: a and b share a pack on each store
    vault_before = {p.name for p in (tmp_path / "vault").rglob("*") if p.is_file()}
    res = cli_json(cfg, "forget", ids[a.name])
    # the private pack is rewritten without a; a's public members stay, noise, until prune
    assert {d["role"] for d in res["deleted"]} == {"private"}
    assert any(d["store"] == "vault" for d in res["deleted"])
    assert {d["store"] for d in res["in_packs"]} == {"cloud-a", "cloud-b", "cloud-c"}
    code, _, err = cli(cfg, "restore", ids[a.name], "--to", str(tmp_path / "x"), expect=2)
    assert "no protected file" in err
    # no private copy of a is left anywhere; b still restores; no backup names `a`
    vault_after = {p.name for p in (tmp_path / "vault").rglob("*") if p.is_file()}
    prf_a = [d["object"] for d in res["deleted"] if d["store"] == "vault"]
    assert not any(n.startswith(prf_a[0]) for n in vault_after)
    assert vault_after != vault_before
    assert ids[a.name] not in kept_containers(tmp_path / "state")
    cli(cfg, "restore", ids[b.name], "--to", str(tmp_path / "b"))
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 1  # the forgotten file is in no backup


def _public_rows(cfg: Path) -> list:
    from dispersiond.archive import open_archive
    from dispersiond.config import load_config

    with open_archive(load_config(cfg)) as v:
        return v.db.objects(None, role="public")


def test_rotate_key_rewraps_and_leaves_public_objects_alone(tmp_path):
    # 8 KiB: the CT image's shards are objects of their own; the others' (smaller, or
    # compressed below it) and every private container are packed; one put: the two small
    # files share one pack on each of the three public stores
    cfg = local_config(tmp_path, pack={"threshold": "8KiB"})
    files = real_files()[:3]
    ids = put_all(cfg, files)
    rows = _public_rows(cfg)
    standalone = {r.name for r in rows if not r.packed}
    packs = {r.name for r in rows if r.packed}
    assert len(standalone) == 3 and len(packs) == 3, (len(standalone), len(packs))
    clouds = {p: p.read_bytes() for d in "abc" for p in (tmp_path / f"cloud-{d}").rglob("*")
              if p.is_file()}
    old_key = (tmp_path / "master.key").read_bytes()
    res = cli_json(cfg, "rotate-key")
    assert res["public_objects_rewritten"] == 0 and res["public_packs_remasked"] == 3
    assert res["containers_rewrapped"] == len(files) and res["packed_members_unreadable"] == 0
    assert (tmp_path / "master.key").read_bytes() != old_key
    after = {p: p.read_bytes() for d in "abc" for p in (tmp_path / f"cloud-{d}").rglob("*")
             if p.is_file()}
    # standalone public objects byte-identical; a pack is keyed from the master key, so
    # each is written again (new name, new mask) with its members' bytes unchanged
    assert {p: b for p, b in clouds.items() if p.name in standalone} == \
        {p: b for p, b in after.items() if p.name in standalone}
    assert not packs & {p.name for p in after}
    rows_after = _public_rows(cfg)
    assert {(r.file_id, r.shard, r.digest) for r in rows_after} == \
        {(r.file_id, r.shard, r.digest) for r in rows}
    assert len(after) == len(clouds)
    restore_all(cfg, ids, files, tmp_path / "out")
    # the old key opens nothing any more, and recovery works with the new one
    shutil.rmtree(tmp_path / "state")
    cli_json(cfg, "recover")
    restore_all(cfg, ids, files, tmp_path / "out2")
    (tmp_path / "master.key").write_bytes(old_key)
    shutil.rmtree(tmp_path / "state")
    code, _, err = cli(cfg, "recover", expect=2)
    assert "no readable manifest backup" in err


def test_object_names_and_bytes_leak_nothing(tmp_path):
    cfg = local_config(tmp_path)
    files = real_files()
    put_all(cfg, files)
    assert_no_leak([tmp_path / d for d in ("cloud-a", "cloud-b", "cloud-c", "vault")], files)


def assert_no_leak(roots_or_blobs, files: list[Path], run: int = 16) -> None:
    """No file name, and no run of `run` plaintext bytes of any input, in any object or name."""
    blobs: list[tuple[str, bytes]] = []
    for item in roots_or_blobs:
        if isinstance(item, Path):
            blobs += [(str(p.relative_to(item)), p.read_bytes()) for p in item.rglob("*") if p.is_file()]
        else:
            blobs.append(item)
    assert blobs
    grams = set()
    for f in files:
        data = f.read_bytes()
        step = max(1, len(data) // 20000)
        grams |= {data[i:i + run] for i in range(0, len(data) - run, step)
                  if len(set(data[i:i + run])) > 2}  # skip runs of padding bytes
    names = [f.name for f in files] + [f.stem for f in files]
    for name, blob in blobs:
        for n in names:
            assert n not in name and n.encode() not in blob, (name, n)
        for i in range(0, max(1, len(blob) - run + 1)):
            if blob[i:i + run] in grams:
                raise AssertionError(f"plaintext run found in object {name} at {i}")


def test_put_resumes_after_a_store_failure(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    dead = tmp_path / "cloud-b"
    dead.write_text("not a directory")  # the store cannot be written
    f = real_files()[5]
    res = cli_json(cfg, "put", str(f), expect=0)
    assert res["files"][0]["state"] == "committed"  # restorable from cloud-a already
    assert cli_json(cfg, "ls")[0]["health"] == "degraded"
    dead.unlink()
    res = cli_json(cfg, "put", "--resume")
    assert res["files"][0]["state"] == "done"
    assert cli_json(cfg, "ls")[0]["health"] == "ok"


# ------------------------------------------------------------------ config validation

BASE = {
    "state_dir": "s", "key": {"file": "k"},
    "stores": [{"name": "pub", "type": "local", "path": "p", "trust": "untrusted"},
               {"name": "safe", "type": "local", "path": "v", "trust": "trusted"}],
    "public": {"stores": ["pub"]}, "private": {"min_trust": "trusted", "stores": ["safe"]},
}


def bad(change) -> str:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    change(raw)
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    return str(exc.value)


def test_config_validation_messages():
    parse_config(yaml.safe_load(yaml.safe_dump(BASE)))
    assert "unknown setting" in bad(lambda r: r.update(inboxx="x"))
    assert "stores[safe]" in bad(lambda r: r["stores"][1].update(pathh="x"))
    assert "must not go there" in bad(lambda r: r["stores"][1].update(trust="untrusted"))
    assert "lowest trust level" in bad(lambda r: r["private"].update(min_trust="untrusted"))
    assert "no store named 'nope'" in bad(lambda r: r["public"].update(stores=["nope"]))
    assert "needs 'k'" in bad(lambda r: r["public"].update(mode="erasure"))
    assert "k=3" in bad(lambda r: r["public"].update(mode="erasure", k=3))
    assert "credentials never go in the config" in bad(
        lambda r: r["stores"][0].update(type="s3", bucket="b", secret_access_key="x", path=None))
    assert "both a public and a private" in bad(lambda r: r["public"].update(stores=["pub", "safe"]))


# ------------------------------------------------------------------ real emulators

def cloud_config(tmp_path, make_store_settings, servers: dict) -> Path:
    stores = []
    for name, kind in (("aws", "s3"), ("gcp", "gcs"), ("azr", "azure")):
        settings = make_store_settings(kind, servers.get(kind))
        stores.append({"name": name, "type": kind, "trust": "untrusted", **settings})
    stores.append({"name": "vault", "type": "s3", "trust": "trusted",
                   **make_store_settings("s3", servers.get("vault"))})
    return write_config(tmp_path, stores, {"mode": "erasure", "stores": ["aws", "gcp", "azr"], "k": 2},
                        {"min_trust": "trusted", "stores": ["vault"]})


def bucket_blobs(cfg_path: Path) -> list[tuple[str, bytes]]:
    raw = yaml.safe_load(cfg_path.read_text())
    out = []
    for s in raw["stores"]:
        settings = {k: v for k, v in s.items() if k not in ("name", "type", "trust")}
        with open_store(s["type"], s["name"], **settings) as st:
            out += [(f"{s['name']}/{n}", st.get_bytes(n)) for n in st.list("")]
    return out


def test_erasure_across_three_clouds_survives_an_outage(tmp_path, make_store_settings, spawn_server):
    gcs = spawn_server("gcs")
    cfg = cloud_config(tmp_path, make_store_settings, {"gcs": gcs})
    files = real_files()
    ids = put_all(cfg, files)
    restore_all(cfg, ids, files, tmp_path / "out1")
    assert_no_leak(bucket_blobs(cfg), files)

    gcs.stop()  # one cloud is down: any 2 of 3 still rebuild every file
    restore_all(cfg, ids, files, tmp_path / "out2")
    rep = cli_json(cfg, "verify", expect=1)
    assert {p["store"] for p in rep["problems"]} == {"gcp"} and rep["unrestorable"] == []

    gcs.start()  # it comes back empty (in-memory server): repair rebuilds its shards
    from buckets import create_bucket

    create_bucket(gcs, yaml.safe_load(cfg.read_text())["stores"][1]["bucket"])
    assert {p["problem"] for p in cli_json(cfg, "verify", expect=1)["problems"]} == {"missing"}
    rep = cli_json(cfg, "repair")
    assert len(rep["repaired"]) == len(files) and rep["failed"] == []
    # every file's lost gcp member rebuilt into one new pack on gcp, whatever packs they had
    assert [(p["store"], p["members"]) for p in rep["repacked"]] == [("gcp", len(files))]
    assert len({stored_member(cfg, fid, "gcp").name for fid in ids.values()}) == 1
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    assert all(r["health"] == "ok" for r in cli_json(cfg, "ls"))
    restore_all(cfg, ids, files, tmp_path / "out3")


def test_corrupted_shard_is_named_and_repaired(tmp_path, make_store_settings):
    cfg = cloud_config(tmp_path, make_store_settings, {})
    f = real_files()[2]
    fid = put_all(cfg, [f])[f.name]
    shard = stored_member(cfg, fid, "azr")  # a member of azr's pack
    assert shard.packed
    tamper(cfg, "azr", shard.name, shard.offset + shard.length // 2)
    assert cli_json(cfg, "verify")["problems"] == []  # same size: shallow cannot see it
    rep = cli_json(cfg, "verify", "--deep", expect=1)
    assert [(p["store"], p["problem"], p["object"], p["shard"]) for p in rep["problems"]] == [
        ("azr", "corrupt", shard.name, 2)]
    out = tmp_path / "out"
    cli(cfg, "restore", fid, "--to", str(out))
    assert sha(out) == sha(f)
    assert len(cli_json(cfg, "repair", "--deep")["repaired"]) == 1
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    assert stored_member(cfg, fid, "azr").name != shard.name


# ------------------------------------------------------------------ init and keys

def test_init_gives_a_working_setup_as_a_separate_process(tmp_path):
    from dsp import run_cli

    r = run_cli("init", str(tmp_path / "site"))
    assert r.returncode == 0, r.stderr
    key = tmp_path / "site" / "master.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    cfg = tmp_path / "site" / "dispersiond.yaml"
    f = real_files()[3]
    r = run_cli("-c", str(cfg), "put", str(f))
    assert r.returncode == 0 and r.stdout.split()[1] == "done", r.stderr
    assert r.stderr == ""  # quiet unless asked
    r = run_cli("-c", str(cfg), "restore", f.name, "--to", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "back") == sha(f)
    r = run_cli("init", str(tmp_path / "site"))
    assert r.returncode == 2 and "never overwrites" in r.stderr


def test_passphrase_key(tmp_path, monkeypatch):
    from dsp import run_cli

    env = {"DISPERSIOND_PASSPHRASE": "correct horse battery staple"}
    r = run_cli("init", "--passphrase", str(tmp_path / "p"), env=env)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "p" / "master.key").exists()
    cfg = tmp_path / "p" / "dispersiond.yaml"
    assert "salt:" in cfg.read_text()
    f = real_files()[4]
    assert run_cli("-c", str(cfg), "put", str(f), env=env).returncode == 0
    wrong = run_cli("-c", str(cfg), "restore", f.name, "--to", str(tmp_path / "x"),
                    env={"DISPERSIOND_PASSPHRASE": "another passphrase entirely"})
    assert wrong.returncode == 2 and "different master key" in wrong.stderr
    missing = run_cli("-c", str(cfg), "ls", env={"DISPERSIOND_PASSPHRASE": ""})
    assert missing.returncode == 2 and "DISPERSIOND_PASSPHRASE" in missing.stderr
    ok = run_cli("-c", str(cfg), "restore", f.name, "--to", str(tmp_path / "y"), env=env)
    assert ok.returncode == 0 and sha(tmp_path / "y") == sha(f)


def test_rotate_key_moves_a_passphrase_key_to_a_new_passphrase(tmp_path):
    from dsp import run_cli

    old = {"DISPERSIOND_PASSPHRASE": "correct horse battery staple"}
    new = {"DISPERSIOND_PASSPHRASE": "a brand new passphrase here"}
    assert run_cli("init", "--passphrase", str(tmp_path / "p"), env=old).returncode == 0
    cfg = tmp_path / "p" / "dispersiond.yaml"
    salt_before = yaml.safe_load(cfg.read_text())["key"]["salt"]
    files = real_files()[:2]
    for f in files:
        assert run_cli("-c", str(cfg), "put", str(f), env=old).returncode == 0
    stores = tmp_path / "p" / "stores"
    public = {p: p.read_bytes() for p in stores.rglob("*") if p.is_file() and "vault" not in
              p.parts and "manifest" not in p.parts}

    r = run_cli("-c", str(cfg), "rotate-key", env=old)  # no terminal, no new passphrase
    assert r.returncode == 2 and "DISPERSIOND_NEW_PASSPHRASE" in r.stderr, r.stderr
    # What a crash right after the rotation recorded its new salt leaves behind:
    from dispersiond.keys import derive_key, key_id
    from dispersiond.state import StateDB

    salt = os.urandom(16)
    db = StateDB(tmp_path / "p" / "state" / "state.db")
    db.set_rotation_salt(salt.hex())
    db.set_rotation_key_id(key_id(derive_key(new["DISPERSIOND_PASSPHRASE"].encode(), salt)))
    db.close()
    r = run_cli("-c", str(cfg), "rotate-key",  # the resumed rotation must use the same one
                env={**old, "DISPERSIOND_NEW_PASSPHRASE": "yet another passphrase"})
    assert r.returncode == 2 and "give that one again" in r.stderr, r.stderr
    r = run_cli("-c", str(cfg), "rotate-key", "--json",
                env={**old, "DISPERSIOND_NEW_PASSPHRASE": new["DISPERSIOND_PASSPHRASE"]})
    assert r.returncode == 0, r.stderr
    res = __import__("json").loads(r.stdout)
    assert res["containers_rewrapped"] == 2 and res["public_objects_rewritten"] == 0
    text = cfg.read_text()
    assert salt.hex() in text  # the salt the interrupted run chose
    assert salt_before not in text and "# set it in the service environment" in text
    # both files are small, so their public fragments are packed: a pack is keyed from
    # the master key, so each was written again (new name, new mask)
    now_public = {p for p in stores.rglob("*") if p.is_file() and "vault" not in p.parts
                  and "manifest" not in p.parts}
    assert res["public_packs_remasked"] == len(public) == len(now_public)
    assert not now_public & set(public)
    # A crash after the config got the new salt but before the record was dropped: the
    # next run only tidies up.
    db = StateDB(tmp_path / "p" / "state" / "state.db")
    db.set_rotation_salt(salt.hex())
    db.close()
    r = run_cli("-c", str(cfg), "rotate-key", "--json", env=new)
    assert r.returncode == 0 and '"containers_rewrapped": 0' in r.stdout, r.stderr
    db = StateDB(tmp_path / "p" / "state" / "state.db")
    assert db.rotation() == (None, None)  # the record was dropped
    db.close()

    for env, ok in ((new, True), (old, False)):
        r = run_cli("-c", str(cfg), "restore", files[0].name, "--to",
                    str(tmp_path / f"out-{ok}"), env=env)
        assert (r.returncode == 0) == ok, r.stderr
    assert sha(tmp_path / "out-True") == sha(files[0])
    # a blank device with the new passphrase and the rewritten config gets everything back
    shutil.rmtree(tmp_path / "p" / "state")
    assert run_cli("-c", str(cfg), "recover", env=new).returncode == 0
    r = run_cli("-c", str(cfg), "restore", files[1].name, "--to", str(tmp_path / "o2"), env=new)
    assert r.returncode == 0 and sha(tmp_path / "o2") == sha(files[1])


def test_os_errors_are_one_line_not_a_traceback(tmp_path):
    cfg = local_config(tmp_path)
    f = real_files()[3]
    put_all(cfg, [f])
    (tmp_path / "plainfile").write_text("x")  # a file where a folder is expected
    code, _, err = cli(cfg, "restore", f.name, "--to", str(tmp_path / "plainfile" / "y"),
                       expect=None)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("dispersiond: error:") and "plainfile" in err


def test_a_write_failure_mid_encode_is_clear_and_resumes(tmp_path):
    """A file-size limit stands in for a full disk (no root needed): every write past
    1 MiB fails with an OSError, as it would with ENOSPC."""
    import resource
    import signal
    import subprocess
    import sys

    cfg = local_config(tmp_path, "replicate")
    big = tmp_path / "study.bin"
    big.write_bytes(os.urandom(3 << 20))

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "put", str(big)],
                       capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("dispersiond: error:")
    assert not any((tmp_path / "state" / "work").iterdir())  # the partial stage is gone
    assert not kept_containers(tmp_path / "state")  # no half-written container
    assert [f["state"] for f in cli_json(cfg, "ls", "--all")] == ["claimed"]
    res = cli_json(cfg, "put", "--resume")  # the limit is gone: it finishes
    assert [f["state"] for f in res["files"]] == ["done"]
    cli(cfg, "restore", big.name, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == sha(big)


def test_files_that_settle_together_commit_and_finish_in_one_transaction(tmp_path):
    """The daemon commits the files a batch of confirmed uploads made restorable, and
    marks done the ones whose after-policy ran, one transaction (one fsync) per step."""
    from contextlib import contextmanager

    from dispersiond.config import load_config
    from dispersiond.ops.finalize import finalize_many
    from dispersiond.ops.protect import Throttle, admit, commit_many, encode, upload, upload_one
    from dispersiond.archive import open_archive

    cfg = load_config(local_config(tmp_path, "replicate"))
    with open_archive(cfg, exclusive=True) as v:
        fids = [admit(v, p) for p in real_files()[:4]]
        for fid in fids:
            encode(v, fid)
        for fid in fids[:2]:
            assert upload(v, fid) == []
        (prf,) = v.db.objects(fids[2], "role='private'")
        upload_one(v, prf, Throttle(None))  # its private backup only: not restorable yet
        real_tx, count = v.db.tx, [0]

        @contextmanager
        def counted():
            count[0] += 1
            with real_tx() as conn:
                yield conn

        v.db.tx = counted
        assert commit_many(v, [v.db.file(fid) for fid in fids]) == fids[:2]
        assert count[0] == 1
        assert [v.db.file(fid).state for fid in fids] == ["committed"] * 2 + ["encoded"] * 2
        assert commit_many(v, [v.db.file(fid) for fid in fids]) == []  # nothing new: no tx
        assert count[0] == 1
        v.db.tx = real_tx
        with v.db.tx() as conn:
            conn.execute("UPDATE files SET backed_up=1")
        v.db.tx = counted
        assert finalize_many(v, fids) == fids[:2]
        assert count[0] == 2
        assert [v.db.file(fid).state for fid in fids] == ["done"] * 2 + ["encoded"] * 2
