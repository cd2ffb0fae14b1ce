"""Roles that mean something (paper sections 3.1 and 4.2): the responsible doctor gets the
record as stored; an institute and the health authority get a de-identified copy carried
inside the bundle, read back here with pydicom, json and the HL7 parser; an identified share
to them needs a reason, which is audited. Pseudonyms link within a recipient, not across."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import hl7
import pydicom
import pytest
import yaml

from dispersiond.identity import load_identity
from dispersiond.share import BundleTampered, open_bundle
from dsp import cli, cli_json, local_config, put, real_files

CT, MR = real_files()[0], real_files()[1]
FHIR = next(p for p in real_files() if p.suffix == ".json")
HL7 = next(p for p in real_files() if p.suffix == ".hl7")
CSV = next(p for p in real_files() if p.suffix == ".csv")
CSV_COLUMNS = {"timestamp": "year", "patient_id": "pseudonym", "heart_rate_bpm": "keep",
               "systolic_mmhg": "keep", "diastolic_mmhg": "keep", "spo2_pct": "keep",
               "temp_c": "keep"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keygen(path: Path) -> dict:
    return cli_json(None, "keygen", "--out", str(path))


@pytest.fixture
def site(tmp_path: Path) -> dict:
    """A device with three recipients (doctor, authority, institute), each of whom has
    made an identity and pinned the device."""
    who = {}
    for name in ("dr-lee", "rki", "uni-lyon"):
        key = tmp_path / "recipients" / f"{name}.key"
        who[name] = (key, keygen(key))
    cfg = local_config(tmp_path, "replicate", recipients=[
        {"name": "dr-lee", "role": "doctor", "public_key": who["dr-lee"][1]["public_key"],
         "request_key": who["dr-lee"][1]["request_key"]},
        {"name": "rki", "role": "authority", "public_key": who["rki"][1]["public_key"],
         "request_key": who["rki"][1]["request_key"],
         "deid": {"csv": {"columns": CSV_COLUMNS}}},
        {"name": "uni-lyon", "role": "institute", "public_key": who["uni-lyon"][1]["public_key"],
         "request_key": who["uni-lyon"][1]["request_key"],
         "deid": {"csv": {"columns": CSV_COLUMNS}}}])
    device_key = cli_json(cfg, "identity")["sender_key"]
    for name, (key, _) in who.items():
        cli(None, "trust", "patient-jane", device_key, "--identity", str(key))
    return {"cfg": cfg, "who": who, "tmp": tmp_path}


def share_to(site: dict, fid: str, to: str, *extra: str) -> Path:
    out = site["tmp"] / f"{fid[:8]}-{to}-{len(extra)}.dspshare"
    cli_json(site["cfg"], "share", fid, "--to", to, "--out", str(out), *extra)
    return out


def opened(site: dict, bundle: Path, to: str, out: Path):
    return open_bundle(bundle, load_identity(site["who"][to][0]), out)


def audit(cfg: Path) -> list[dict]:
    return cli_json(cfg, "audit", "ls")


def test_the_doctor_gets_the_record_as_stored(site: dict) -> None:
    (fid,) = put(site["cfg"], CT)
    got = opened(site, share_to(site, fid, "dr-lee"), "dr-lee", site["tmp"] / "ct.dcm")
    assert got.path.read_bytes() == CT.read_bytes() and got.sender.name == "patient-jane"


@pytest.mark.parametrize("to", ["rki", "uni-lyon"])
def test_institute_and_authority_get_de_identified_dicom(site: dict, to: str) -> None:
    (fid,) = put(site["cfg"], CT)
    bundle = share_to(site, fid, to)
    got = opened(site, bundle, to, site["tmp"] / "ct-deid.dcm")
    assert got.deidentified and got.sender.name == "patient-jane"
    data = got.path.read_bytes()
    assert data != CT.read_bytes()
    orig = pydicom.dcmread(CT)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert str(ds.get("PatientName", "")) != str(orig.PatientName)
    assert ds.get("PatientID", "") != orig.PatientID
    assert not ds.get("PatientBirthDate", "")
    assert ds.get("PatientIdentityRemoved") == "YES"
    assert ds.pixel_array.shape == orig.pixel_array.shape  # the image itself is kept
    assert str(orig.PatientName).encode() not in bundle.read_bytes()
    assert CT.name not in json.dumps(got.as_dict())
    ev = [e for e in audit(site["cfg"]) if e["event"] == "share"][-1]
    assert ev["detail"]["recipient"] == to and ev["detail"]["deidentified"] is True


@pytest.mark.parametrize("to", ["rki", "uni-lyon"])
def test_fhir_hl7_and_csv_lose_name_id_and_birth_date(site: dict, to: str) -> None:
    for src in (FHIR, HL7, CSV):
        (fid,) = put(site["cfg"], src)
        got = opened(site, share_to(site, fid, to), to, site["tmp"] / f"{to}-{src.name}")
        text = got.path.read_text()
        for secret in ("Camille", "Exemple", "EXEMPLE", "PAT0001", "1980-05-14", "19800514",
                       "pat-0001"):
            assert secret not in text, (src.name, secret)
        if src is FHIR:
            doc = json.loads(text)
            pat = next(e["resource"] for e in doc["entry"]
                       if e["resource"]["resourceType"] == "Patient")
            assert "name" not in pat and pat.get("birthDate", "1980")[:4] == "1980"
        elif src is HL7:
            msg = hl7.parse(text.replace("\n", "\r"))
            pid = msg.segment("PID")
            assert str(pid[5]) != "EXEMPLE^CAMILLE^MARIE" and str(pid[7]) in ("", "1980")
        else:
            rows = text.splitlines()
            assert rows[0].startswith("timestamp,patient_id") and len(rows) > 2


def test_an_identified_share_to_an_institute_needs_a_reason_and_is_audited(site: dict) -> None:
    cfg = site["cfg"]
    (fid,) = put(cfg, CT)
    out = site["tmp"] / "named.dspshare"
    code, _, err = cli(cfg, "share", fid, "--to", "uni-lyon", "--identified", "--out", str(out),
                       expect=2)
    assert "needs --reason" in err and not out.exists()
    refused = audit(cfg)[-1]
    assert refused["event"] == "share-refused" and refused["detail"]["recipient"] == "uni-lyon"
    cli_json(cfg, "share", fid, "--to", "uni-lyon", "--identified", "--reason",
             "tumour board second opinion, patient consent form 2026-12", "--out", str(out))
    got = opened(site, out, "uni-lyon", site["tmp"] / "named.dcm")
    assert got.path.read_bytes() == CT.read_bytes()
    ev = audit(cfg)[-1]
    assert ev["event"] == "share" and ev["detail"]["override_reason"].startswith("tumour board")


def test_pseudonyms_link_within_a_recipient_and_not_across(site: dict) -> None:
    cfg = site["cfg"]
    a, b = put(cfg, FHIR, HL7)  # the same patient (PAT0001) in two formats
    ids = {}
    for to in ("rki", "uni-lyon"):
        for fid in (a, b):
            got = opened(site, share_to(site, fid, to), to, site["tmp"] / f"{to}-{fid}")
            text = got.path.read_text()
            ids.setdefault(to, []).append(text)
    # CSV is the simplest place to see the patient pseudonym: share it twice to each
    (c,) = put(cfg, CSV)
    col = {}
    for to in ("rki", "uni-lyon"):
        seen = set()
        for n in range(2):
            got = opened(site, share_to(site, c, to, *(["--force"] * n)), to,
                         site["tmp"] / f"{to}-csv-{n}.csv")
            seen |= {row.split(",")[1] for row in got.path.read_text().splitlines()[1:]}
        assert len(seen) == 1  # same patient, same pseudonym, every time, for one recipient
        col[to] = seen.pop()
    assert col["rki"] != col["uni-lyon"]  # and two recipients' pseudonyms do not join


def test_a_tampered_inline_bundle_is_refused(site: dict) -> None:
    (fid,) = put(site["cfg"], FHIR)
    bundle = share_to(site, fid, "uni-lyon")
    raw = bytearray(bundle.read_bytes())
    raw[-40] ^= 1
    bad = site["tmp"] / "bad.dspshare"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleTampered):
        opened(site, bad, "uni-lyon", site["tmp"] / "bad.json")
    assert not (site["tmp"] / "bad.json").exists()


def test_config_rejects_deid_settings_for_a_doctor(tmp_path: Path) -> None:
    from dispersiond.config import parse_config

    raw = yaml.safe_load(local_config(tmp_path, "replicate").read_text())
    raw["recipients"] = [{"name": "dr-x", "role": "doctor", "public_key": "dspk1x",
                          "deid": {}}]
    with pytest.raises(Exception, match="doctor gets records as stored"):
        parse_config(raw)


def test_a_record_that_cannot_be_de_identified_is_never_sent_as_is(tmp_path: Path) -> None:
    key = tmp_path / "lab.key"
    pub = keygen(key)["public_key"]
    cfg = local_config(tmp_path, "replicate", recipients=[
        {"name": "lab", "role": "other", "public_key": pub}])  # no CSV columns named
    (fid,) = put(cfg, CSV)
    out = tmp_path / "csv.dspshare"
    code, _, err = cli(cfg, "share", fid, "--to", "lab", "--out", str(out), expect=2)
    assert "share refused: no record could be shared" in err and "column" in err
    assert not out.exists() and "PAT0001" not in err
    ev = audit(cfg)[-1]
    assert ev["event"] == "share-refused" and ev["file_id"] == fid
