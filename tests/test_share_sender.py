"""Bundles say who sent them: the sending device signs every bundle, the recipient pins
the devices they trust, and a forged, re-addressed, re-signed or stripped bundle is
refused. Also the bundle findings of the same audit (bad names, low-order keys, huge
lengths) and what `forget --keep-public` leaves an earlier bundle able to do."""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dispersiond import codec
from dispersiond.config import load_config
from dispersiond.identity import encode_public, load_identity
from dispersiond.share import (BundleFormatError, ObjectGone, SignatureInvalid, UnknownSender,
                               UnsignedBundle, bundle, device, open_bundle)
from dispersiond.state import dumps
from dispersiond.archive import open_archive
from dsp import cli, cli_json, local_config, real_files
from test_sharing import add_to_config, keygen, put, share_cli

SMALL = real_files()[-1]  # a small CSV


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def site(tmp_path: Path):
    """A patient's device with one shared file, and a doctor who has not pinned it yet."""
    key = tmp_path / "doctor" / "dr-lee.key"
    pub = keygen(key)
    cfg = local_config(tmp_path, "replicate",
                       recipients=[{"name": "dr-lee", "role": "doctor", "public_key": pub}])
    fid = put(cfg, SMALL)
    res = share_cli(cfg, fid, "dr-lee", tmp_path / "b.dspshare")
    return cfg, key, Path(res["path"]), fid


def device_key(cfg: Path) -> device.DeviceKey:
    with open_archive(load_config(cfg)) as v:
        return device.load(v.root, v.key)


def sealed_plain(path: Path, ident) -> tuple[bytes, bytes]:
    """(header, plaintext of the sealed part): what a recipient can see of their bundle."""
    raw = path.read_bytes()
    head = raw[:bundle.HEADER_LEN]
    *_, epk, n = bundle.HEADER.unpack(head)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    shared = ident.secret.exchange(X25519PublicKey.from_public_bytes(epk))
    key = bundle._seal_key(shared, epk, ident.public_bytes)
    return head, ChaCha20Poly1305(key).decrypt(bytes(12), raw[52:52 + n], head)


def rest_of(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[bundle.HEADER_LEN + bundle.HEADER.unpack(raw[:bundle.HEADER_LEN])[-1]:]


def forged_bundle(tmp_path: Path, doctor_pub: bytes, signer=None, claim: bytes | None = None):
    """The attack from the audit finding, as the attacker would write it: their own se2
    encode of a fake record, a file:// link, sealed to the doctor's *public* key; no
    device secret. With `signer`: signed by the attacker's own key (claiming `claim`)."""
    fake = b"patient,potassium\nJane Doe,9.9 (critical: stop all medication)\n" * 40
    key = bytes(range(32))
    puf, prf = codec.encode("se2", key, fake)
    obj = tmp_path / "attacker-object"
    obj.write_bytes(puf)
    now = int(time.time())
    payload = {"v": 2, "scheme": "se2", "file": "ab" * 16, "share_key": key.hex(),
               "size": len(fake), "digest_alg": "sha256",
               "digest": hashlib.sha256(fake).hexdigest(), "puf_len": len(puf),
               "prf_len": len(prf), "prf_digest": hashlib.sha256(prf).hexdigest(),
               "public": {"mode": "replicate"},
               "objects": [{"shard": None, "url": obj.as_uri(), "offset": 0,
                            "length": len(puf), "size": len(puf),
                            "digest": hashlib.sha256(puf).hexdigest()}],
               "created": now, "expires": now + 3600}
    body = dumps(payload).encode()
    if signer is None:
        sealed = bundle.seal(body, doctor_pub)
    else:
        spk = claim or signer.public_bytes

        def plain(h: bytes) -> bytes:
            return spk + signer.sign(bundle.signed_message(h, doctor_pub, spk, body)) + body
        sealed = bundle._seal(bundle.VERSION, plain, 96 + len(body), doctor_pub, None)
    out = tmp_path / "forged.dspshare"
    out.write_bytes(sealed + prf)
    return out, fake


def test_the_forgery_from_the_audit_finding_is_refused(site, tmp_path: Path) -> None:
    cfg, key, _, _ = site
    ident = load_identity(key)
    cli(None, "trust", "jane", cli_json(cfg, "identity")["sender_key"], "--identity", str(key))
    out = tmp_path / "record.csv"
    forged, fake = forged_bundle(tmp_path, ident.public_bytes)
    with pytest.raises(UnsignedBundle, match="no sender signature"):
        open_bundle(forged, ident, out)
    code, _, err = cli(None, "open-share", str(forged), "-i", str(key), "-o", str(out), expect=2)
    assert "anyone who knows your public key could have made it" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out.exists()
    # signed by the attacker's own key: an unknown sender, its fingerprint shown
    attacker = device.DeviceKey.generate()
    forged, _ = forged_bundle(tmp_path, ident.public_bytes, attacker)
    with pytest.raises(UnknownSender, match=attacker.fingerprint):
        open_bundle(forged, ident, out)
    # claiming the patient's device key without its secret: the signature fails
    forged, _ = forged_bundle(tmp_path, ident.public_bytes, attacker,
                              claim=device_key(cfg).public_bytes)
    with pytest.raises(SignatureInvalid, match="forged, re-addressed or re-signed"):
        open_bundle(forged, ident, out)
    code, _, err = cli(None, "open-share", str(forged), "-i", str(key), "-o", str(out), expect=2)
    assert "signature does not verify" in err and not out.exists()
    # old bundles still open when the doctor says so explicitly, with a loud warning
    forged, _ = forged_bundle(tmp_path, ident.public_bytes)
    res = cli_json(None, "open-share", str(forged), "-i", str(key), "-o", str(out),
                   "--accept-unsigned")
    assert res["sender"] == {"name": None, "key": None, "fingerprint": None, "signed": False,
                             "pinned": False}
    assert out.read_bytes() == fake
    code, _, err = cli(None, "open-share", str(forged), "-i", str(key), "-o", str(out),
                       "--accept-unsigned", "--force")
    assert "WARNING" in err and "UNSIGNED" in err


def test_a_pinned_device_opens_an_unknown_one_is_refused(site, tmp_path: Path) -> None:
    cfg, key, b, _ = site
    me = cli_json(cfg, "identity")
    assert me["sender_key"].startswith("dspsig1") and me["fingerprint"] == device_key(cfg).fingerprint
    assert cli(cfg, "identity")[1].splitlines() == [me["sender_key"],
                                                     f"fingerprint {me['fingerprint']}"]
    out = tmp_path / "out.csv"
    code, _, err = cli(None, "open-share", str(b), "-i", str(key), "-o", str(out), expect=2)
    assert "not trusted" in err and me["fingerprint"] in err and me["sender_key"] in err
    assert not out.exists()
    # pinned for one bundle on the command line
    res = cli_json(None, "open-share", str(b), "-i", str(key), "-o", str(out),
                   "--sender", me["sender_key"])
    assert res["sender"]["fingerprint"] == me["fingerprint"] and res["sender"]["signed"]
    assert sha(out) == sha(SMALL)
    # pinned by name in the known-senders file next to the identity
    res = cli_json(None, "trust", "jane-doe", me["sender_key"], "-i", str(key))
    assert res["added"] and Path(res["senders_file"]) == key.with_name("dr-lee.key.senders")
    assert not cli_json(None, "trust", "jane-doe", me["sender_key"], "-i", str(key))["added"]
    other = device.DeviceKey.generate().public
    code, _, err = cli(None, "trust", "jane-doe", other, "-i", str(key), expect=2)
    assert "already trusted with another key" in err
    res = cli_json(None, "open-share", str(b), "-i", str(key), "-o", str(out), "--force")
    assert res["sender"]["name"] == "jane-doe" and res["sender"]["pinned"]
    text = cli(None, "open-share", str(b), "-i", str(key), "-o", str(out), "--force")[1]
    assert f"from jane-doe (fingerprint {me['fingerprint']})" in text
    # another device's bundle to the same doctor: refused unless accepted explicitly
    sub = tmp_path / "other-device"
    sub.mkdir()
    cfg2 = local_config(sub, "replicate", recipients=[
        {"name": "dr-lee", "role": "doctor", "public_key": load_identity(key).public}])
    b2 = Path(share_cli(cfg2, put(cfg2, SMALL), "dr-lee", sub / "b.dspshare")["path"])
    with pytest.raises(UnknownSender):
        open_bundle(b2, load_identity(key), tmp_path / "o2")
    code, _, err = cli(None, "open-share", str(b2), "-i", str(key), "-o", str(tmp_path / "o2"),
                       "--accept-unknown-sender")
    assert "WARNING" in err and "UNKNOWN device" in err and sha(tmp_path / "o2") == sha(SMALL)


def test_re_addressed_re_signed_and_stripped_bundles_fail(site, tmp_path: Path) -> None:
    cfg, key, b, _ = site
    ident = load_identity(key)
    pins = {device_key(cfg).public_bytes: "jane"}
    assert sha(open_bundle(b, ident, tmp_path / "ok", senders=pins).path) == sha(SMALL)
    head, plain = sealed_plain(b, ident)
    spk, sig, body = plain[:32], plain[32:96], plain[96:]
    # dr-lee forwards it to dr-kim, re-sealed, signature kept: it was not made for dr-kim
    kim_key = tmp_path / "kim" / "dr-kim.key"
    keygen(kim_key)
    kim = load_identity(kim_key)
    readdressed = tmp_path / "readdressed.dspshare"
    readdressed.write_bytes(bundle._seal(bundle.VERSION, lambda h: plain, len(plain),
                                         kim.public_bytes, None) + rest_of(b))
    with pytest.raises(SignatureInvalid):
        open_bundle(readdressed, kim, tmp_path / "x", senders=pins)
    # re-signed by someone else under the device's key: fails; under their own: unknown
    mallory = device.DeviceKey.generate()
    for spk2, who in ((spk, SignatureInvalid), (mallory.public_bytes, UnknownSender)):
        def resigned(h: bytes, spk2=spk2) -> bytes:
            return spk2 + mallory.sign(bundle.signed_message(h, ident.public_bytes, spk2,
                                                             body)) + body
        bad = tmp_path / "resigned.dspshare"
        bad.write_bytes(bundle._seal(bundle.VERSION, resigned, len(plain), ident.public_bytes,
                                     None) + rest_of(b))
        with pytest.raises(who):
            open_bundle(bad, ident, tmp_path / "x", senders=pins)
    # signature stripped: re-sealed as a version 1 bundle
    stripped = tmp_path / "stripped.dspshare"
    stripped.write_bytes(bundle.seal(body, ident.public_bytes) + rest_of(b))
    with pytest.raises(UnsignedBundle):
        open_bundle(stripped, ident, tmp_path / "x", senders=pins)
    # the version byte changed from 2 to 1 (and so a signature read as payload): tag fails
    raw = bytearray(b.read_bytes())
    raw[4] = 1
    (tmp_path / "v1.dspshare").write_bytes(bytes(raw))
    with pytest.raises(Exception, match="failed authentication"):
        open_bundle(tmp_path / "v1.dspshare", ident, tmp_path / "x", senders=pins,
                    accept_unsigned=True)
    assert not (tmp_path / "x").exists() and sig


def test_the_device_key_survives_rotation_and_recover_and_appears_on_old_states(
        site, tmp_path: Path) -> None:
    cfg, key, _, fid = site
    before = cli_json(cfg, "identity")
    state = tmp_path / "state"
    assert (state / "sender.key").stat().st_mode & 0o077 == 0
    assert device_key(cfg).seed.hex() not in (state / "sender.key").read_bytes().hex()
    cli(cfg, "rotate-key")
    assert cli_json(cfg, "identity") == before  # re-wrapped under the new key, same identity
    cli(None, "trust", "jane", before["sender_key"], "-i", str(key))
    shutil.rmtree(state)  # the device is lost: a blank one with the config and key
    assert cli_json(cfg, "recover")["files"] == 1
    assert cli_json(cfg, "identity") == before
    b = Path(share_cli(cfg, fid, "dr-lee", tmp_path / "after.dspshare")["path"])
    got = open_bundle(b, load_identity(key), tmp_path / "after.csv")
    assert got.sender.name == "jane" and sha(got.path) == sha(SMALL)
    # a state directory from before device keys: one is made on first use, and backed up
    (state / "sender.key").unlink()
    new = cli_json(cfg, "identity")
    assert new != before and (state / "sender.key").exists()
    cli(cfg, "put", str(real_files()[-2]))
    shutil.rmtree(state)
    cli_json(cfg, "recover")
    assert cli_json(cfg, "identity") == new


def test_init_makes_the_device_key(tmp_path: Path) -> None:
    code, out, _ = cli(None, "init", str(tmp_path / "site"))
    shown = cli_json(tmp_path / "site" / "dispersiond.yaml", "identity")
    assert shown["sender_key"] in out and shown["fingerprint"] in out
    assert (tmp_path / "site" / "state" / "sender.key").exists()


def test_bad_names_low_order_keys_and_huge_lengths_give_clear_errors(site, tmp_path: Path) -> None:
    cfg, key, b, fid = site
    code, _, err = cli(cfg, "share", fid, "--to", "dr-lee", "--out", "bad\0name.dspshare",
                       expect=2)
    assert "NUL byte" in err and len(err.strip().splitlines()) == 1
    for point in (bytes(32), bytes([1]) + bytes(31),
                  bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")):
        add_to_config(cfg, recipients=[{"name": "dr-lee", "role": "doctor",
                                        "public_key": encode_public(point)}])
        code, _, err = cli(cfg, "share", fid, "--to", "dr-lee", "--out",
                           str(tmp_path / "lo.dspshare"), expect=2)
        assert "low-order" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lo.dspshare").exists()
    # a forged erasure payload (signed by the device, so it reaches the checks) that would
    # make the decoder walk 10^11 one-byte blocks: refused at once
    ident = load_identity(key)
    head, plain = sealed_plain(b, ident)
    import json

    p = json.loads(plain[96:])
    signer = device_key(cfg)
    for change, msg in (({"puf_len": 10**11, "public": {"mode": "erasure", "k": 1, "n": 1,
                                                         "block": 1}}, "block size"),
                        ({"puf_len": 10**11, "public": {"mode": "erasure", "k": 1, "n": 1,
                                                         "block": 1 << 18}}, "does not fit"),
                        ({"puf_len": 10**11}, "does not fit"),
                        ({"name": "../../etc/passwd"}, "name"),
                        ({"name": "a\0b"}, "name")):
        q = {**p, **change}
        if "public" in change:
            q["objects"] = [{**o, "shard": 0} for o in p["objects"]][:1]
        bad = tmp_path / "huge.dspshare"
        bad.write_bytes(bundle.seal_signed(dumps(q).encode(), ident.public_bytes, signer)
                        + rest_of(b))
        t0 = time.monotonic()
        with pytest.raises(BundleFormatError, match=msg):
            open_bundle(bad, ident, tmp_path, senders={signer.public_bytes: "jane"})
        assert time.monotonic() - t0 < 2


def test_forget_keep_public_leaves_earlier_bundles_working_and_forget_revokes(
        site, tmp_path: Path) -> None:
    """As SECURITY.md says: a bundle carries its own private container, so erasing the
    device's copies does not revoke it while the public objects stay; erasing those does."""
    cfg, key, b, fid = site
    cli(None, "trust", "jane", cli_json(cfg, "identity")["sender_key"], "-i", str(key))
    cli(cfg, "forget", fid, "--keep-public")
    got = open_bundle(b, load_identity(key), tmp_path / "still.csv")
    assert sha(got.path) == sha(SMALL)
    assert "earlier share bundle" in cli(cfg, "forget", "--help", expect=0)[1]
    fid2 = put(cfg, SMALL)
    b2 = Path(share_cli(cfg, fid2, "dr-lee", tmp_path / "b2.dspshare")["path"])
    cli(cfg, "forget", fid2)
    with pytest.raises(ObjectGone):
        open_bundle(b2, load_identity(key), tmp_path / "gone.csv")
