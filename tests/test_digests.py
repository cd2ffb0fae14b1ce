"""Digest algorithms: the `digest` setting, and manifest backups and share bundles written
when every digest was SHA-256 (manifest format 1, bundle payload version 1), which this
build still reads. Databases of that time (state schema 1): test_state_migrations.py."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import blake3
import pytest
import yaml

from dispersiond import digests, manifest, share
from dispersiond.config import load_config, parse_config
from dispersiond.pack import extract
from dispersiond.errors import ConfigError
from dispersiond.identity import load_identity
from dispersiond.placement import new_object_name
from dispersiond.state import dumps
from dispersiond.archive import open_archive
from dsp import cli, cli_json, local_config, manifest_objects, put, real_files, restores, whole

# Independent of dispersiond.digests: what each algorithm's own library says.
REFERENCE = {"blake3": lambda b: blake3.blake3(b).hexdigest(),
             "sha256": lambda b: hashlib.sha256(b).hexdigest()}


def test_known_answers() -> None:
    assert digests.of("sha256", b"abc") == ("ba7816bf8f01cfea414140de5dae2223"
                                           "b00361a396177a9cb410ff61f20015ad")
    assert digests.of("blake3", b"abc") == ("6437b3ac38465133ffb63b75273a8db5"
                                           "48c558465d79db03fd359c6cd5bd9d85")
    with pytest.raises(ValueError, match="unknown digest algorithm 'md5'"):
        digests.new("md5")


def test_an_unknown_digest_setting_is_refused(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate", digest="md5")
    with pytest.raises(ConfigError, match="digest"):
        parse_config(yaml.safe_load(cfg.read_text()), tmp_path)


@pytest.mark.parametrize("alg", ["blake3", "sha256"])
@pytest.mark.parametrize("mode", ["replicate", "erasure"])
def test_every_digest_is_made_with_the_configured_algorithm(tmp_path: Path, alg: str,
                                                            mode: str) -> None:
    cfg = local_config(tmp_path, mode, digest=alg)
    files = real_files()[:3]
    ids = put(cfg, *files)
    ref = REFERENCE[alg]
    with open_archive(load_config(cfg)) as v:
        for fid, path in zip(ids, files):
            f = v.db.file(fid)
            assert f.digest_alg == alg and f.digest == ref(path.read_bytes())
            assert f.container_digest == ref(v.container(fid))
            for o in v.db.objects(fid):
                assert o.digest_alg == alg
                stored = v.store(o.store).get_bytes(o.name)
                if o.packed:  # the pack's digest of the stored pack, the member's of itself
                    assert o.pack_digest == ref(stored) == v.db.pack(o.store, o.name).digest
                    member = extract(stored, o.offset, o.length, master_key=v.key, name=o.name)
                    assert o.digest == ref(member)
                else:
                    assert o.digest == ref(stored)
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    restores(cfg, ids[0], files[0], tmp_path / "out")


def _as_format_1(doc: dict) -> dict:
    files = []
    for e in doc["files"]:
        assert e["digest_alg"] == "sha256"
        e = {k: v for k, v in e.items() if k != "digest_alg"}
        e["sha256"], e["prf_sha256"] = e.pop("digest"), e.pop("prf_digest")
        e["objects"] = [{**{k: v for k, v in o.items() if k != "digest"}, "sha256": o["digest"]}
                        for o in e["objects"]]
        files.append(e)
    return {**doc, "format": 1, "files": files}


def test_a_format_1_manifest_backup_is_recovered(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate", digest="sha256")
    files = real_files()[:2]
    ids = put(cfg, *files)
    with open_archive(load_config(cfg)) as v:
        vault = v.store("vault")
        names = list(vault.list(manifest.PREFIX))
    (newest, _, _) = manifest_objects(cfg)[0][-1]
    newest = whole(newest)
    with open_archive(load_config(cfg)) as v:
        vault = v.store("vault")
        assert newest["format"] == manifest.FORMAT == 6  # 6: segmented checkpoints
        old = manifest.seal(v.key, _as_format_1(newest))
        for n in names:
            vault.delete(n)
        vault.put_bytes(f"{manifest.PREFIX}{new_object_name()}", old)
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == len(files)
    for fid, path in zip(ids, files):
        restores(cfg, fid, path, tmp_path / f"out-{fid}")
    assert cli_json(cfg, "verify", "--deep")["problems"] == []


def test_an_unknown_manifest_format_is_refused() -> None:
    with pytest.raises(Exception, match="manifest format 9 is not read by this build"):
        manifest.load_into(None, {"format": 9, "files": []})


def test_a_version_1_share_bundle_still_opens(tmp_path: Path) -> None:
    key = tmp_path / "recipient" / "dr-lee.key"
    pub = cli(None, "keygen", "--out", str(key))[1].strip()
    cfg = local_config(tmp_path, "replicate", digest="sha256",
                       recipients=[{"name": "dr-lee", "role": "doctor", "public_key": pub}])
    original = real_files()[0]
    (fid,) = put(cfg, original)
    bundle = tmp_path / "b.dspshare"
    cli_json(cfg, "share", fid, "--to", "dr-lee", "--out", str(bundle))
    ident = load_identity(key)
    with open(bundle, "rb") as fb:
        p = share.unseal(fb, ident)
        rest = fb.read()  # the re-wrapped private container
    assert p["v"] == 2 and p["digest_alg"] == "sha256"
    v1 = {k: v for k, v in p.items() if k not in ("digest_alg", "digest", "prf_digest")}
    v1.update(v=1, sha256=p["digest"], prf_sha256=p["prf_digest"],
              objects=[{**{k: v for k, v in o.items() if k != "digest"}, "sha256": o["digest"]}
                       for o in p["objects"]])
    old = tmp_path / "old.dspshare"
    old.write_bytes(share.seal(dumps(v1).encode(), ident.public_bytes) + rest)
    res = cli_json(None, "open-share", str(old), "--identity", str(key),
                   "--out", str(tmp_path / "got"), "--accept-unsigned")  # v1: no signature
    assert res["digest_alg"] == "sha256"
    assert (tmp_path / "got").read_bytes() == original.read_bytes()
    # ... and a version 1 payload whose digests were altered is still caught
    v1["sha256"] = "0" * 64
    bad = tmp_path / "bad.dspshare"
    bad.write_bytes(share.seal(dumps(v1).encode(), ident.public_bytes) + rest)
    code, _, err = cli(None, "open-share", str(bad), "--identity", str(key),
                       "--out", str(tmp_path / "bad"), "--accept-unsigned", expect=None)
    assert code != 0 and "digest" in err and not (tmp_path / "bad").exists()
