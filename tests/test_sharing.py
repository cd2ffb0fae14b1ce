"""Sharing (paper section 4.2): identities, share bundles with time-limited links,
open-share on the recipient side, standing grants, the audit log and revocation by rekey.

Bundles are opened the way a recipient would: with nothing but the bundle and an
identity file, over plain HTTP links to the real emulators (moto for S3, Azurite for
Azure, fake-gcs-server for GCS) or file:// links to local stores.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from backends import open_store
from dispersiond import share
from dispersiond.share import bundle as bundle_format, device
from dispersiond.config import load_config
from dispersiond.identity import Identity, IdentityError, decode_public, load_identity
from dispersiond.share import (BundleFormatError, BundleTampered, LinkExpired, ObjectGone,
                               ObjectMismatch, ObjectTampered, ShareError,
                               WrongIdentity, open_bundle)
from dispersiond.state import dumps
from dispersiond.archive import open_archive
from dsp import cli, cli_json, kept_containers, local_config, real_files, run_cli, write_config

CT = real_files()[0]  # a real DICOM file (CT_small.dcm): header split, several chunks


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def keygen(path: Path) -> str:
    return cli(None, "keygen", "--out", str(path))[1].strip()


def add_to_config(cfg: Path, **sections) -> None:
    raw = yaml.safe_load(cfg.read_text())
    raw.update(sections)
    cfg.write_text(yaml.safe_dump(raw))


def put(cfg: Path, path: Path) -> str:
    res = cli_json(cfg, "put", str(path))
    assert res["errors"] == [] and res["files"][0]["state"] == "done"
    return res["files"][0]["file_id"]


def share_cli(cfg: Path, ref: str, to: str, out: Path, *extra: str) -> dict:
    return cli_json(cfg, "share", ref, "--to", to, "--out", str(out), *extra)


@pytest.fixture
def doctor(tmp_path: Path) -> tuple[Path, str]:
    """A recipient identity file (as `keygen` writes it) and its public key."""
    key = tmp_path / "recipient" / "dr-lee.key"
    return key, keygen(key)


def trust_device(cfg: Path, doctor) -> str:
    """What a doctor does once per patient device: pin the key its owner gives them."""
    key = cli_json(cfg, "identity")["sender_key"]
    name = "patient-" + hashlib.sha256(str(cfg).encode()).hexdigest()[:8]
    cli(None, "trust", name, key, "--identity", str(doctor[0]))
    return name


def local_setup(tmp_path: Path, doctor, mode: str = "replicate", **extra) -> Path:
    cfg = local_config(tmp_path, mode, **extra)
    add_to_config(cfg, recipients=[{"name": "dr-lee", "role": "doctor", "public_key": doctor[1]}])
    trust_device(cfg, doctor)
    return cfg


def cloud_setup(tmp_path: Path, make_store_settings, doctor, public: dict,
                kinds=(("aws", "s3"), ("gcp", "gcs"), ("azr", "azure"))) -> Path:
    stores = [{"name": name, "type": kind, "trust": "untrusted", **make_store_settings(kind)}
              for name, kind in kinds]
    stores.append({"name": "vault", "type": "local", "trust": "trusted",
                   "path": str(tmp_path / "vault")})
    cfg = write_config(tmp_path, stores, public, {"min_trust": "trusted", "stores": ["vault"]},
                       recipients=[{"name": "dr-lee", "role": "doctor", "public_key": doctor[1]}])
    trust_device(cfg, doctor)
    return cfg


def store_of(cfg: Path, name: str):
    raw = next(s for s in yaml.safe_load(cfg.read_text())["stores"] if s["name"] == name)
    return open_store(raw["type"], name, **{k: v for k, v in raw.items()
                                            if k not in ("name", "type", "trust")})


def objects(cfg: Path, fid: str, role: str = "public") -> list[dict]:
    with open_archive(load_config(cfg)) as v:
        return [o.__dict__ for o in v.db.objects(fid, "role=?", (role,))]


def linked(cfg: Path, fid: str) -> dict[str, str]:
    """Store -> the object a bundle of `fid` links there: `fid`'s fragments are packed,
    so a standalone copy made for the share (docs/FORMAT.md section 6.6)."""
    with open_archive(load_config(cfg)) as v:
        assert all(o.packed for o in v.db.objects(fid, role="public"))
        return {c.store: c.name for c in v.db.share_copies(fid)}


def audit_events(cfg: Path) -> list[dict]:
    return cli_json(cfg, "audit", "ls")


def recipient_env(tmp_path: Path) -> tuple[dict, Path]:
    """A process environment with no config and no cloud credentials, and an empty folder."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISPERSIOND", "AWS_", "AZURE", "GOOGLE"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    home = tmp_path / "recipient-home"
    home.mkdir()
    env["HOME"] = str(home)
    return env, home


# ------------------------------------------------------------------ identities

def test_keygen_writes_a_secret_identity_and_a_checked_public_key(tmp_path: Path) -> None:
    key = tmp_path / "dr-lee.key"
    pub = keygen(key)
    assert pub.startswith("dspk1") and len(pub) < 70
    assert (key.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "dr-lee.key.pub").read_text().strip() == pub
    ident = load_identity(key)
    assert ident.public == pub and decode_public(pub) == ident.public_bytes
    assert pub not in key.read_text().splitlines()[-1]  # the secret line is not the public key
    # a typo in a pasted public key is caught by its checksum
    typo = pub[:20] + ("a" if pub[20] != "a" else "b") + pub[21:]
    with pytest.raises(IdentityError, match="damaged"):
        decode_public(typo)
    with pytest.raises(IdentityError, match="start with"):
        decode_public("ssh-ed25519 AAAA")
    # keygen never overwrites; a public key file is not an identity
    code, _, err = cli(None, "keygen", "--out", str(key), expect=2)
    assert "already exists" in err and load_identity(key).public == pub
    with pytest.raises(IdentityError, match="holds a public key"):
        load_identity(tmp_path / "dr-lee.key.pub")
    text = key.read_text().splitlines()
    text[-1] = text[-1][:-2] + ("AA" if not text[-1].endswith("AA") else "BB")
    (tmp_path / "broken.key").write_text("\n".join(text))
    with pytest.raises(IdentityError, match="damaged"):
        load_identity(tmp_path / "broken.key")


def test_a_passphrase_protected_identity_opens_shares_only_with_its_passphrase(
        tmp_path: Path, monkeypatch) -> None:
    key = tmp_path / "recipient" / "dr-lee.key"
    monkeypatch.setenv("DISPERSIOND_PASSPHRASE", "correct horse battery")
    pub = cli(None, "keygen", "--out", str(key), "--passphrase")[1].strip()
    monkeypatch.delenv("DISPERSIOND_PASSPHRASE")
    secret_line = key.read_text().splitlines()[-1]
    assert secret_line.startswith("DSPSKE1") and (key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(IdentityError, match="protected by a passphrase"):
        load_identity(key)
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(key, b"correct horse battery!")
    assert load_identity(key, b"correct horse battery").public == pub
    damaged = tmp_path / "damaged.key"
    damaged.write_text(key.read_text().replace(secret_line, secret_line[:-3] + "AAA"))
    with pytest.raises(IdentityError, match="wrong passphrase .or the file is damaged"):
        load_identity(damaged, b"correct horse battery")

    cfg = local_setup(tmp_path, (key, pub))
    bundle = Path(share_cli(cfg, put(cfg, CT), "dr-lee", tmp_path / "ct.dspshare")["path"])
    env, home = recipient_env(tmp_path)  # a separate process with no terminal
    args = ("open-share", str(bundle), "--identity", str(key), "--out", "ct.bin")
    proc = run_cli(*args, env=env, cwd=home)
    assert proc.returncode == 2 and "a passphrase is needed" in proc.stderr, proc.stderr
    proc = run_cli(*args, env={**env, "DISPERSIOND_PASSPHRASE": "wrong horse"}, cwd=home)
    assert proc.returncode == 2 and "wrong passphrase" in proc.stderr, proc.stderr
    assert not (home / "ct.bin").exists()
    proc = run_cli(*args, env={**env, "DISPERSIOND_PASSPHRASE": "correct horse battery"},
                   cwd=home)
    assert proc.returncode == 0, proc.stderr
    assert sha(home / "ct.bin") == sha(CT)


# ------------------------------------------------------------------ emulators

def test_bundle_opens_with_no_config_over_three_clouds_from_any_k(
        tmp_path: Path, make_store_settings, doctor) -> None:
    """Erasure 2-of-3 over S3 (presigned), GCS (V4 signed) and Azure (SAS)."""
    cfg = cloud_setup(tmp_path, make_store_settings, doctor,
                      {"mode": "erasure", "stores": ["aws", "gcp", "azr"], "k": 2})
    fid = put(cfg, CT)
    res = share_cli(cfg, fid, "dr-lee", tmp_path / "ct.dspshare")
    bundle = Path(res["path"])
    assert res["links"] == 3 and res["recipient"] == "dr-lee"
    raw = bundle.read_bytes()
    assert CT.name.encode() not in raw and CT.stem.encode() not in raw  # no name by default
    assert hashlib.sha256(raw).hexdigest() == res["bundle_sha256"]

    # the recipient: a separate process, no config, no credentials, an empty folder
    env, home = recipient_env(tmp_path)
    proc = run_cli("open-share", str(bundle), "--identity", str(doctor[0]), "--out", "ct.bin",
                   env=env, cwd=home)
    assert proc.returncode == 0, proc.stderr
    assert sha(home / "ct.bin") == sha(CT)
    assert sorted(p.name for p in home.iterdir()) == ["ct.bin"]  # no temporary leftovers

    # any 2 of the 3 links do: lose the S3 shard, then the others still rebuild it
    copies = linked(cfg, fid)
    shard0 = next(o for o in objects(cfg, fid) if o["shard"] == 0)
    with store_of(cfg, shard0["store"]) as st:
        st.delete(copies[shard0["store"]])
    ident = load_identity(doctor[0])
    got = open_bundle(bundle, ident, tmp_path / "again.bin")
    assert got.fetched == 2 and sha(got.path) == sha(CT)

    # an altered GCS shard leaves only one intact: a clear refusal, nothing written
    shard1 = next(o for o in objects(cfg, fid) if o["shard"] == 1)
    with store_of(cfg, shard1["store"]) as st:
        name = copies[shard1["store"]]
        data = bytearray(st.get_bytes(name))
        data[len(data) // 2] ^= 0x01
        st.delete(name)
        st.put_bytes(name, bytes(data))
    with pytest.raises(ObjectTampered, match="shard 1 on .*does not match the digest"):
        open_bundle(bundle, ident, tmp_path / "third.bin")
    assert not (tmp_path / "third.bin").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".open-share-")] == []


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure", "local"])
def test_each_store_type_serves_a_bundle(tmp_path: Path, make_store_settings, doctor,
                                         kind: str) -> None:
    cfg = cloud_setup(tmp_path, make_store_settings, doctor,
                      {"mode": "replicate", "stores": ["one"]}, kinds=(("one", kind),))
    fid = put(cfg, CT)
    res = share_cli(cfg, CT.name, "dr-lee", tmp_path / "b.dspshare", "--with-name",
                    "--expires", "10m")
    p = _payload(Path(res["path"]), doctor)
    url = p["objects"][0]["url"]
    expected = {"s3": "X-Amz-Signature=", "gcs": "X-Goog-Signature=", "azure": "sig=",
                "local": "file://"}[kind]
    assert expected in url
    (copy,) = linked(cfg, fid).values()  # CT is small: packed, so linked through a copy
    assert copy in url and objects(cfg, fid)[0]["name"] not in url
    assert p["name"] == CT.name and p["expires"] - p["created"] == 600
    outdir = tmp_path / "inbox-of-dr-lee"
    outdir.mkdir()
    got = open_bundle(Path(res["path"]), load_identity(doctor[0]), outdir)
    assert got.path == outdir / CT.name and sha(got.path) == sha(CT) and got.file_id == fid


def test_expired_links_fail_clearly(tmp_path: Path, make_store_settings, doctor) -> None:
    """Azurite enforces SAS expiry itself; moto and fake-gcs-server serve expired links, so
    there the bundle's own (authenticated) expiry is what open-share refuses on."""
    ident = load_identity(doctor[0])
    bundles = {}
    for kind in ("s3", "azure"):  # azure last: its bundle is opened while still valid
        sub = tmp_path / kind
        sub.mkdir()
        cfg = cloud_setup(sub, make_store_settings, doctor,
                          {"mode": "replicate", "stores": ["one"]}, kinds=(("one", kind),))
        fid = put(cfg, CT)
        bundles[kind] = Path(share_cli(cfg, fid, "dr-lee", sub / "b.dspshare",
                                       "--expires", "2s")["path"])
    got = open_bundle(bundles["azure"], ident, tmp_path / "in-time.bin")  # still valid
    assert sha(got.path) == sha(CT)
    time.sleep(3.2)
    for kind, bundle in bundles.items():
        with pytest.raises(LinkExpired, match="expired at"):
            open_bundle(bundle, ident, tmp_path / f"{kind}.bin")
        assert not (tmp_path / f"{kind}.bin").exists()
    # even a recipient that ignores the bundle's expiry cannot read from Azure any more
    with pytest.raises(LinkExpired, match=r"HTTP 403"):
        open_bundle(bundles["azure"], ident, tmp_path / "late.bin", enforce_expiry=False)
    assert not (tmp_path / "late.bin").exists()
    code, _, err = cli(None, "open-share", str(bundles["s3"]), "--identity", str(doctor[0]),
                       "--out", str(tmp_path / "cli.bin"), expect=2)
    assert "expired" in err and "new share" in err


def test_rekey_revokes_an_earlier_bundle(tmp_path: Path, make_store_settings, doctor) -> None:
    cfg = cloud_setup(tmp_path, make_store_settings, doctor,
                      {"mode": "erasure", "stores": ["aws", "gcp", "azr"], "k": 2})
    fid = put(cfg, CT)
    old_bundle = Path(share_cli(cfg, fid, "dr-lee", tmp_path / "old.dspshare")["path"])
    ident = load_identity(doctor[0])
    assert sha(open_bundle(old_bundle, ident, tmp_path / "before.bin").path) == sha(CT)
    old_objs = objects(cfg, fid) + objects(cfg, fid, "private")
    old_prf = kept_containers(tmp_path / "state")[fid]
    copies = linked(cfg, fid)  # the bundle's links: standalone copies of packed shards
    assert len(copies) == 3

    res = cli_json(cfg, "rekey", fid)
    assert res["old_deleted"] and res["new_objects"] == 4 and res["deletions_pending"] == 0
    assert res["share_copies_deleted"] == 3 and linked(cfg, fid) == {}

    # every old object (and copy) is gone from its store; the new ones are different objects
    for store, name in copies.items():
        with store_of(cfg, store) as st:
            assert name not in set(st.list("")), store
    for o in old_objs:
        with store_of(cfg, o["store"]) as st:
            assert o["name"] not in set(st.list("")), o["store"]
    new_objs = objects(cfg, fid) + objects(cfg, fid, "private")
    assert {o["name"] for o in new_objs}.isdisjoint({o["name"] for o in old_objs})
    new_prf = kept_containers(tmp_path / "state")[fid]
    assert new_prf[104:] != old_prf[104:] and len(new_prf) == len(old_prf)

    with pytest.raises(ObjectGone, match="re-keyed or erased"):
        open_bundle(old_bundle, ident, tmp_path / "after.bin")
    code, _, err = cli(None, "open-share", str(old_bundle), "--identity", str(doctor[0]),
                       "--out", str(tmp_path / "after.bin"), expect=2)
    assert "revokes it" in err and not (tmp_path / "after.bin").exists()

    # the file itself is intact under the same id, and a new share opens
    cli(cfg, "restore", fid, "--to", str(tmp_path / "restored.dcm"))
    assert sha(tmp_path / "restored.dcm") == sha(CT)
    new_bundle = Path(share_cli(cfg, fid, "dr-lee", tmp_path / "new.dspshare")["path"])
    assert sha(open_bundle(new_bundle, ident, tmp_path / "new.bin").path) == sha(CT)
    assert [e["event"] for e in audit_events(cfg)] == ["share", "rekey", "restore", "share"]

    # the manifest backup names the new objects: a lost device recovers the re-keyed file
    shutil.rmtree(tmp_path / "state")
    assert cli_json(cfg, "recover")["files"] == 1
    cli(cfg, "restore", fid, "--to", str(tmp_path / "recovered.dcm"))
    assert sha(tmp_path / "recovered.dcm") == sha(CT)
    assert cli(cfg, "audit", "verify")[0] == 0


# ------------------------------------------------------------------ local stores

def test_wrong_identity_and_any_flipped_byte_fail_clearly(tmp_path: Path, doctor) -> None:
    cfg = local_setup(tmp_path, doctor)
    f = real_files()[-1]  # a small CSV: every byte of its bundle is flipped below
    put(cfg, f)
    bundle = Path(share_cli(cfg, f.name, "dr-lee", tmp_path / "b.dspshare")["path"])
    ident = load_identity(doctor[0])
    out = tmp_path / "out.csv"

    other = tmp_path / "someone-else.key"
    keygen(other)
    with pytest.raises(WrongIdentity, match="sealed to another recipient"):
        open_bundle(bundle, load_identity(other), out)
    code, _, err = cli(None, "open-share", str(bundle), "--identity", str(other), "--out",
                       str(out), expect=2)
    assert "identity it was made for" in err

    raw = bundle.read_bytes()
    kinds: dict[str, int] = {}
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        (tmp_path / "bad.dspshare").write_bytes(bytes(bad))
        with pytest.raises(ShareError) as caught:
            open_bundle(tmp_path / "bad.dspshare", ident, out)
        assert isinstance(caught.value, (BundleTampered, BundleFormatError, WrongIdentity)), i
        kinds[type(caught.value).__name__] = kinds.get(type(caught.value).__name__, 0) + 1
    assert kinds["BundleTampered"] > len(raw) - 40  # all but the few header identity bytes
    for bad, kind in ((raw[:-1], BundleTampered), (raw + b"\0", BundleTampered),
                      (raw[:30], BundleTampered), (os.urandom(200), BundleFormatError),
                      (b"", BundleFormatError)):
        (tmp_path / "bad.dspshare").write_bytes(bad)
        with pytest.raises(kind):
            open_bundle(tmp_path / "bad.dspshare", ident, out)
    assert not out.exists()
    (tmp_path / "bad.dspshare").write_bytes(raw[:-1])
    code, _, err = cli(None, "open-share", str(tmp_path / "bad.dspshare"), "--identity",
                       str(doctor[0]), "--out", str(out), expect=2)
    assert "truncated" in err and not out.exists()
    assert sha(open_bundle(bundle, ident, out).path) == sha(f)  # the intact one still opens


def _payload(bundle: Path, doctor) -> dict:
    with open(bundle, "rb") as fb:
        return share.unseal(fb, load_identity(doctor[0]))


def _private_part(bundle: Path) -> bytes:
    raw = bundle.read_bytes()
    sealed_len = share.HEADER.unpack(raw[: share.HEADER_LEN])[-1]
    return raw[share.HEADER_LEN + sealed_len:]


def test_bundle_for_one_file_never_opens_another_files_objects(tmp_path: Path, doctor) -> None:
    cfg = local_setup(tmp_path, doctor)
    a, b = real_files()[3:5]
    fa, fb = put(cfg, a), put(cfg, b)
    ba = Path(share_cli(cfg, fa, "dr-lee", tmp_path / "a.dspshare")["path"])
    bb = Path(share_cli(cfg, fb, "dr-lee", tmp_path / "b.dspshare")["path"])
    ident = load_identity(doctor[0])

    # a store swaps in what file B's bundle links under the names A's links: caught by
    # the digests
    la, lb = linked(cfg, fa), linked(cfg, fb)
    assert la.keys() == lb.keys() == {"cloud-a", "cloud-b"}
    for store, name in la.items():
        with store_of(cfg, store) as st:
            data_b = st.get_bytes(lb[store])
            st.delete(name)
            st.put_bytes(name, data_b)
    with pytest.raises(ObjectTampered, match="does not match the digest"):
        open_bundle(ba, ident, tmp_path / "a.out")
    assert not (tmp_path / "a.out").exists()

    # a bundle made (wrongly) with A's private part but B's objects and digests: the se2
    # pairing check names the mix-up
    pa, pb = _payload(ba, doctor), _payload(bb, doctor)
    mixed = {**pa, "objects": pb["objects"], "puf_len": pb["puf_len"], "public": pb["public"]}
    with open_archive(load_config(cfg)) as v:  # made wrongly by the device itself: signed
        signer = device.load(v.root, v.key)
    (tmp_path / "mixed.dspshare").write_bytes(
        share.seal_signed(dumps(mixed).encode(), ident.public_bytes, signer) + _private_part(ba))
    with pytest.raises(ObjectMismatch, match="belong to a different file"):
        open_bundle(tmp_path / "mixed.dspshare", ident, tmp_path / "mixed.out")
    assert not (tmp_path / "mixed.out").exists()
    assert sha(open_bundle(bb, ident, tmp_path / "b.out").path) == sha(b)


def test_share_refusals_are_audited_and_nothing_is_written(tmp_path: Path, doctor) -> None:
    cfg = local_setup(tmp_path, doctor)
    f = real_files()[3]
    fid = put(cfg, f)
    out = tmp_path / "b.dspshare"
    for args, msg in (
            ((fid, "--to", "dr-who"), "not in the config's recipients"),
            (("no-such-file", "--to", "dr-lee"), "no protected file matches"),
            ((fid, "--to", "dr-lee", "--expires", "8d"), "between 1s and 7d")):
        code, _, err = cli(cfg, "share", *args, "--out", str(out), expect=2)
        assert "share refused" in err and msg in err
        assert not out.exists()
    # a file still in the pipeline is not shared either
    from dispersiond.ops.protect import admit

    with open_archive(load_config(cfg)) as v:
        pending = admit(v, real_files()[4])
    code, _, err = cli(cfg, "share", pending, "--to", "dr-lee", "--out", str(out), expect=2)
    assert "not protected yet" in err and not out.exists()
    events = audit_events(cfg)
    assert [e["event"] for e in events] == ["share-refused"] * 4
    assert [e["file_id"] for e in events] == [fid, None, fid, pending]
    assert all(e["detail"]["recipient"] for e in events)
    assert f.name not in json.dumps(events) and "no-such-file" not in json.dumps(events)


def test_standing_grants_write_a_bundle_per_new_file(tmp_path: Path, doctor) -> None:
    cfg = local_setup(tmp_path, doctor)
    add_to_config(cfg, recipients=[
        {"name": "dr-lee", "role": "doctor", "public_key": doctor[1]},
        {"name": "broken", "role": "institute", "public_key": "dspk1notakey"}],
        grants=[{"recipient": "dr-lee", "outbox": "outbox/dr-lee", "expires": "1h",
                 "with_name": True},
                {"recipient": "broken", "outbox": "outbox/broken"}])
    f = real_files()[1]
    fid = put(cfg, f)  # put applies the standing grants once
    assert (tmp_path / "outbox" / "dr-lee" / f"{fid[:12]}-dr-lee.dspshare").exists()
    with open_archive(load_config(cfg)) as v:
        errors: list[str] = []
        paths = share.apply_grants(v, fid, errors)
        assert share.apply_grants(v, fid) == paths  # again (after a crash): same file replaced
    assert paths == [tmp_path / "outbox" / "dr-lee" / f"{fid[:12]}-dr-lee.dspshare"]
    assert len(errors) == 1 and "broken" in errors[0]
    assert (tmp_path / "outbox" / "dr-lee").stat().st_mode & 0o077 == 0
    got = open_bundle(paths[0], load_identity(doctor[0]), tmp_path)
    assert got.path == tmp_path / f.name and sha(got.path) == sha(f)
    events = [(e["event"], e["detail"]["recipient"], e["detail"]["via"])
              for e in audit_events(cfg)]
    assert events == [("share", "dr-lee", "grant"), ("share-refused", "broken", "grant")] * 3


def test_rekey_that_cannot_upload_changes_nothing(tmp_path: Path, doctor) -> None:
    cfg = local_setup(tmp_path, doctor)
    f = real_files()[3]
    fid = put(cfg, f)
    bundle = Path(share_cli(cfg, fid, "dr-lee", tmp_path / "b.dspshare")["path"])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("cloud-*/**/*") if p.is_file())
    (tmp_path / "cloud-b").rename(tmp_path / "cloud-b-away")  # that disk is gone:
    (tmp_path / "cloud-b").write_text("not a directory")    # and cannot be re-created
    code, _, err = cli(cfg, "rekey", fid, expect=2)
    assert "upload of the re-keyed objects to cloud-b failed" in err and "nothing changed" in err
    (tmp_path / "cloud-b").unlink()
    (tmp_path / "cloud-b-away").rename(tmp_path / "cloud-b")
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.glob("cloud-*/**/*") if p.is_file())
    assert after == before  # what the failed attempt uploaded to cloud-a was removed
    assert sha(open_bundle(bundle, load_identity(doctor[0]), tmp_path / "x").path) == sha(f)
    cli(cfg, "rekey", fid)
    with pytest.raises(ObjectGone):
        open_bundle(bundle, load_identity(doctor[0]), tmp_path / "y")
    cli(cfg, "restore", fid, "--to", str(tmp_path / "z"))
    assert sha(tmp_path / "z") == sha(f)


def test_audit_verify_catches_edited_deleted_and_reordered_entries(tmp_path: Path, doctor) -> None:
    cfg = local_setup(tmp_path, doctor)
    a, b = real_files()[3:5]
    fa, fb = put(cfg, a), put(cfg, b)
    share_cli(cfg, fa, "dr-lee", tmp_path / "a.dspshare")
    cli(cfg, "share", fa, "--to", "mallory", expect=2)
    cli(cfg, "restore", fa, "--to", str(tmp_path / "r"))
    cli(cfg, "forget", fb)
    cli(cfg, "rotate-key")
    cli(cfg, "restore", fa, "--to", str(tmp_path / "r2"))
    events = audit_events(cfg)
    assert [e["event"] for e in events] == ["share", "share-refused", "restore", "forget",
                                           "rotate-key", "restore"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    text = cli(cfg, "audit", "ls")[1]
    assert "share-refused" in text and "recipient=mallory" in text
    ok = cli_json(cfg, "audit", "verify")
    assert ok["ok"] and ok["entries"] == 6 and ok["backup_anchor"]

    db = sqlite3.connect(tmp_path / "state" / "state.db")
    rows = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    head = db.execute("SELECT value FROM meta WHERE key='audit_head'").fetchone()[0]

    def reset() -> None:
        db.execute("DELETE FROM audit")
        db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("UPDATE meta SET value=? WHERE key='audit_head'", (head,))
        db.commit()

    def fails(*needles: str, offline: bool = False) -> None:
        code, out, _ = cli(cfg, "audit", "verify", *(["--offline"] if offline else []), expect=1)
        assert "FAILED" in out and all(n in out for n in needles), out
        reset()
        cli(cfg, "audit", "verify")

    # edit: the refusal becomes a share of someone else
    db.execute("UPDATE audit SET detail=replace(detail, 'mallory', 'dr-lee') WHERE seq=2")
    db.commit()
    fails("entry 2: content was altered")
    db.execute("UPDATE audit SET event='restore' WHERE seq=1")
    db.commit()
    fails("entry 1: content was altered")
    # delete an entry in the middle
    db.execute("DELETE FROM audit WHERE seq=2")
    db.commit()
    fails("entry 2 is missing", "entry 3: does not follow")
    # reorder: swap entries 3 and 4 (their rows, seq numbers kept in order)
    r3, r4 = rows[2], rows[3]
    db.execute("DELETE FROM audit WHERE seq IN (3, 4)")
    db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", (3, *r4[1:]))
    db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", (4, *r3[1:]))
    db.commit()
    fails("entry 3", "entry 4")
    # cut the newest entries off and fix the local head: the manifest backup still knows
    anchor = int(ok["backup_anchor"].split(":")[0])
    assert anchor >= 3
    db.execute("DELETE FROM audit WHERE seq >= ?", (anchor,))
    db.execute("UPDATE meta SET value=? WHERE key='audit_head'",
               (f"{anchor - 1}:{rows[anchor - 2][6]}",))
    db.commit()
    # the recorded head is authenticated: moving it back is caught even offline
    assert "not authenticated" in cli(cfg, "audit", "verify", "--offline", expect=1)[1]
    fails(f"manifest backup head (entry {anchor}) is no longer in the log")
    db.close()


def test_sealing_matches_the_vector_in_format_md() -> None:
    """docs/FORMAT.md section 6 pins the sealing construction byte for byte."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from dispersiond.identity import encode_public, recipient_id

    doc = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text()
    block = doc.split("### Vector (sealing)", 1)[1].split("```")[1]
    vec: dict[str, str] = {}
    key = None
    for line in block.strip().splitlines():
        label, value = line[:15].strip(), line[15:].strip()
        if label:
            key = label
            vec[key] = value.split(" ")[0]
        elif not value.startswith("("):
            vec[key] += value
        else:
            vec[key + " text"] = value.strip("()")
    rsk = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["recipient sk"]))
    esk = X25519PrivateKey.from_private_bytes(bytes.fromhex(vec["ephemeral sk"]))
    rpk = rsk.public_key().public_bytes_raw()
    epk = esk.public_key().public_bytes_raw()
    assert rpk.hex() == vec["recipient pk"] and encode_public(rpk) == vec["recipient pk text"]
    assert recipient_id(rpk).hex() == vec["recipient_id"] and epk.hex() == vec["epk"]
    z = esk.exchange(rsk.public_key())
    assert z.hex() == vec["Z"] and bundle_format._seal_key(z, epk, rpk).hex() == vec["K"]
    sealed = share.seal(bytes.fromhex(vec["payload"]), rpk, esk)
    assert sealed.hex() == vec["H || sealed"]
    with io.BytesIO(sealed) as f:
        with pytest.raises(BundleFormatError, match="malformed"):  # {"v":1} alone is no bundle
            share.unseal(f, Identity(rsk))
