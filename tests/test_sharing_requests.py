"""Consent requests (paper Fig. 5): a recipient asks with their own identity, the owner
sees who asks and what and decides; approvals make bundles that open at the requester,
denials and refusals are audited and tell the requester nothing about which records
exist. The request parser is fuzzed (DISPERSIOND_FUZZ_EXAMPLES for a longer run)."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond.identity import Identity, load_identity
from dispersiond.share import open_bundle
from dispersiond.share.request_format import RequestInvalid, make, parse
from dsp import cli, cli_json, put
from test_sharing_roles import CT, FHIR, HL7, MR, site  # noqa: F401  (fixture)

EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "300"))
NEXT_YEAR = (dt.date.today() + dt.timedelta(days=365)).isoformat()


def ask(site: dict, who: str, *scope: str, name: str = "ask") -> Path:
    out = site["tmp"] / f"{who}-{name}.dsprequest"
    cli(None, "request", "--identity", str(site["who"][who][0]), "--as", who, *scope,
        "--purpose", "influenza surveillance, season 2026", "--valid-until", NEXT_YEAR,
        "--out", str(out))
    return out


def audit(cfg: Path) -> list[dict]:
    return cli_json(cfg, "audit", "ls")


def test_an_approved_request_opens_at_the_institute_de_identified(site: dict) -> None:
    cfg = site["cfg"]
    ct, mr, fhir = put(cfg, CT, MR, FHIR)
    req = ask(site, "uni-lyon", "--kind", "dicom")
    got = cli_json(cfg, "requests", "add", str(req))
    assert got["recipient"] == "uni-lyon" and got["role"] == "institute"
    listed = cli_json(cfg, "requests")
    assert [r["id"] for r in listed] == [got["id"]]
    assert listed[0]["purpose"].startswith("influenza") and listed[0]["records"] == {
        "kind": "dicom"} and listed[0]["gets"] == "de-identified copies"
    out = site["tmp"] / "outbox"
    res = cli_json(cfg, "requests", "approve", got["id"], "--out", str(out))
    assert len(res["bundles"]) == 1 and cli_json(cfg, "requests") == []
    folder = site["tmp"] / "uni-inbox"
    opened = open_bundle(Path(res["bundles"][0]), load_identity(site["who"]["uni-lyon"][0]),
                         folder)
    assert opened.sender.name == "patient-jane"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["request"] == got["id"] and len(manifest["records"]) == 2
    assert {r["kind"] for r in manifest["records"]} == {"dicom"}
    for r in manifest["records"]:
        ds = pydicom.dcmread(folder / r["name"])
        assert not ds.get("PatientBirthDate") and "CompressedSamples" not in str(
            ds.get("PatientName", ""))
        assert r["id"] not in (ct, mr)  # pseudonymous ids, not the device's
    events = [e["event"] for e in audit(cfg)]
    assert events[-3:] == ["request-received", "export", "request-approved"]


def test_an_approved_request_gives_the_doctor_the_records_as_stored(site: dict) -> None:
    cfg = site["cfg"]
    (ct,) = put(cfg, CT)
    got = cli_json(cfg, "requests", "add", str(ask(site, "dr-lee", "--id", ct)))
    res = cli_json(cfg, "requests", "approve", got["id"], "--out", str(site["tmp"] / "ob"))
    (bundle,) = res["bundles"]
    opened = open_bundle(Path(bundle), load_identity(site["who"]["dr-lee"][0]),
                         site["tmp"] / "ct.dcm")
    assert opened.path.read_bytes() == CT.read_bytes()


def test_a_denial_is_audited_and_writes_nothing(site: dict) -> None:
    cfg = site["cfg"]
    put(cfg, HL7)
    got = cli_json(cfg, "requests", "add", str(ask(site, "rki")))
    out = site["tmp"] / "outbox-rki"
    res = cli_json(cfg, "requests", "deny", got["id"], "--note", "not this season")
    assert res["state"] == "denied"
    assert not out.exists() and not (load_cfg_state(cfg) / "outbox").exists()
    last = audit(cfg)[-1]
    assert last["event"] == "request-denied" and last["detail"]["request"] == got["id"]
    code, _, err = cli(cfg, "requests", "approve", got["id"], expect=2)
    assert "already denied" in err
    assert cli_json(cfg, "requests", "--all")[0]["state"] == "denied"


def load_cfg_state(cfg: Path) -> Path:
    from dispersiond.config import load_config

    return load_config(cfg).state_path


def test_unknown_key_tampered_and_replayed_requests_are_refused(site: dict) -> None:
    cfg = site["cfg"]
    stranger = site["tmp"] / "stranger.key"
    cli(None, "keygen", "--out", str(stranger))
    site["who"]["stranger"] = (stranger, None)
    msgs = []
    for with_records in (False, True):  # the answer must not depend on what the device holds
        if with_records:
            put(cfg, CT)
        code, _, err = cli(cfg, "requests", "add", str(ask(site, "stranger",
                                                           name=str(with_records))), expect=2)
        assert "not the request_key of any configured recipient" in err
        msgs.append(err.replace(err.split("fingerprint ")[1].split(")")[0], "X"))
    assert msgs[0] == msgs[1]
    refused = [e for e in audit(cfg) if e["event"] == "request-refused"]
    assert len(refused) == 2 and "record" not in json.dumps([e["detail"] for e in refused])

    good = ask(site, "uni-lyon")
    doc = json.loads(good.read_text())
    body = json.loads(base64.urlsafe_b64decode(doc["body"] + "=="))
    body["records"] = {"kind": "csv"}  # widen what is asked, keep the old signature
    doc["body"] = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    bad = site["tmp"] / "tampered.dsprequest"
    bad.write_text(json.dumps(doc))
    code, _, err = cli(cfg, "requests", "add", str(bad), expect=2)
    assert "signature does not verify" in err and "Traceback" not in err

    cli_json(cfg, "requests", "add", str(good))
    code, _, err = cli(cfg, "requests", "add", str(good), expect=2)
    assert "received before" in err
    assert len(cli_json(cfg, "requests")) == 1


def test_a_request_signed_by_one_recipient_for_another_key_is_refused(site: dict) -> None:
    ident = load_identity(site["who"]["rki"][0])
    other = Identity.generate()
    data = json.loads(make(ident, "rki", {"kind": "fhir"}, "x", NEXT_YEAR))
    body = json.loads(base64.urlsafe_b64decode(data["body"] + "=="))
    body["public_key"] = other.public  # bundles would be sealed to someone else
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    from dispersiond.share.request_format import LABEL

    data["body"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    data["sig"] = base64.urlsafe_b64encode(ident.signing_key.sign(LABEL + raw)).decode()
    f = site["tmp"] / "swapped.dsprequest"
    f.write_text(json.dumps(data))
    code, _, err = cli(site["cfg"], "requests", "add", str(f), expect=2)
    assert "not rki's in the config" in err


def test_old_identity_files_sign_requests_with_a_derived_key(tmp_path: Path) -> None:
    ident = Identity.generate()
    path = tmp_path / "old.key"  # an identity file as keygen wrote it before request keys
    path.write_text(f"# dispersiond identity (X25519)\n{ident.secret_text()}\n")
    path.chmod(0o600)
    again = load_identity(path)
    assert again.request_key == ident.request_key and again.request_key.startswith("dspsig1")
    req = parse(make(again, "old-lab", {"kind": "csv"}, "cohort study", NEXT_YEAR))
    assert req.body["request_key"] == ident.request_key


IDENT = Identity.generate()
VALID = make(IDENT, "lab", {"kind": "dicom", "since": "2026-01-01"}, "study", NEXT_YEAR)
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize="CI" in os.environ,
                suppress_health_check=[HealthCheck.too_slow])


def _only_refusals(data: bytes) -> None:
    try:
        req = parse(data)
    except RequestInvalid as exc:
        assert "\n" not in str(exc) and str(exc).startswith("consent request refused: ")
        return
    # anything accepted verified under the key it names and kept every bound
    assert req.signer and len(req.raw_body) <= 64 << 10


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_request_parser_random_bytes(data: bytes) -> None:
    _only_refusals(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_fuzz_request_parser_mutations(flips) -> None:
    raw = bytearray(VALID)
    for at, byte in flips:
        raw[at] = byte
    _only_refusals(bytes(raw))


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                         c, max_size=4),
                    max_leaves=20),
       st.sampled_from(["v", "requester", "public_key", "request_key", "records", "purpose",
                        "valid_until", "nonce", "created"]))
def test_fuzz_request_parser_signed_bodies(value, field: str) -> None:
    """Bodies signed correctly but holding anything in one field reach the shape checks."""
    from dispersiond.share.request_format import LABEL

    body = json.loads(base64.urlsafe_b64decode(json.loads(VALID)["body"] + "=="))
    body[field] = value
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    doc = {"dispersiond_request": 1,
           "body": base64.urlsafe_b64encode(raw).decode().rstrip("="),
           "sig": base64.urlsafe_b64encode(IDENT.signing_key.sign(LABEL + raw)).decode()}
    _only_refusals(json.dumps(doc).encode())
