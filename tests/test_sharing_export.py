"""Study exports: many records to one recipient in one bundle, de-identified as the role
requires, with a manifest inside; open-share extracts them all into a folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pydicom

from dispersiond.config import load_config
from dispersiond.state import SCHEMA_VERSION, StateDB
from dsp import cli, cli_json, put, run_cli
from test_sharing_roles import CSV, CT, FHIR, HL7, MR, site  # noqa: F401  (fixture)


def variants(tmp: Path, src: Path, n: int) -> list[Path]:
    """n distinct small records of one kind (a different patient id in each)."""
    out = []
    folder = tmp / "records"
    folder.mkdir(exist_ok=True)
    text = src.read_text()
    for i in range(n):
        p = folder / f"{src.stem}-{i}{src.suffix}"
        p.write_text(text.replace("PAT0001", f"PAT{i:04d}").replace("pat-0001", f"pat-{i:04d}"))
        out.append(p)
    return out


def test_an_export_of_many_records_opens_into_a_folder_with_its_manifest(site: dict) -> None:
    cfg, tmp = site["cfg"], site["tmp"]
    files = variants(tmp, FHIR, 12) + variants(tmp, CSV, 6) + [CT, MR, HL7]
    put(cfg, *files)
    bundle = tmp / "study.dspshare"
    res = cli_json(cfg, "export", "--to", "uni-lyon", "--out", str(bundle))
    assert res["records"] == len(files) and res["deidentified"] and res["skipped"] == []
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPERSIOND")}
    folder = tmp / "study"
    got = run_cli("open-share", str(bundle), "--identity", str(site["who"]["uni-lyon"][0]),
                  "--out", str(folder), "--json", env=env)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["sender"]["name"] == "patient-jane"
    manifest = json.loads((folder / "manifest.json").read_text())
    recs = manifest["records"]
    assert len(recs) == len(files) and manifest["sender"]["name"] == "patient-jane"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [r["name"] for r in recs] + ["manifest.json"])
    kinds = [r["kind"] for r in recs]
    assert kinds.count("fhir") == 12 and kinds.count("csv") == 6 and kinds.count("dicom") == 2
    joined = "".join((folder / r["name"]).read_bytes().decode("latin-1") for r in recs)
    for secret in ("Camille", "EXEMPLE", "PAT0003", "19800514", "CompressedSamples"):
        assert secret not in joined
    assert all(r["deidentified"] and len(r["digest"]) == 64 and r["size"] > 0 for r in recs)
    assert not any(p.name in json.dumps(manifest) for p in files)  # no original names
    dicoms = [r for r in recs if r["kind"] == "dicom"]
    assert all(pydicom.dcmread(folder / r["name"]).PatientIdentityRemoved == "YES"
               for r in dicoms)
    ev = cli_json(cfg, "audit", "ls")[-1]
    assert ev["event"] == "export" and ev["detail"]["records"] == len(files)
    assert len(ev["detail"]["file_ids"]) == len(files)


def test_export_filters_by_kind_and_name_and_refuses_an_unexplained_override(
        site: dict) -> None:
    cfg, tmp = site["cfg"], site["tmp"]
    put(cfg, CT, MR, FHIR, HL7)
    res = cli_json(cfg, "export", "--to", "rki", "--kind", "dicom", "--out", str(tmp / "d"))
    assert res["records"] == 2
    res = cli_json(cfg, "export", "--to", "rki", "--name", "*.hl7", "--out", str(tmp / "h"))
    assert res["records"] == 1
    code, _, err = cli(cfg, "export", "--to", "rki", "--since", "2999-01-01", "--out",
                       str(tmp / "none"), expect=2)
    assert "no record matched" in err and not (tmp / "none").exists()
    code, _, err = cli(cfg, "export", "--to", "rki", "--identified", "--out",
                       str(tmp / "named"), expect=2)
    assert "needs --reason" in err and not (tmp / "named").exists()
    res = cli_json(cfg, "export", "--to", "rki", "--kind", "fhir", "--identified", "--reason",
                   "outbreak investigation order 2026-17", "--out", str(tmp / "named"))
    assert res["records"] == 1 and not res["deidentified"]
    folder = tmp / "named-open"
    cli(None, "open-share", str(tmp / "named"), "--identity", str(site["who"]["rki"][0]),
        "--out", str(folder))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["override_reason"].startswith("outbreak")
    assert (folder / manifest["records"][0]["name"]).read_bytes() == FHIR.read_bytes()


def test_a_state_database_from_before_requests_gains_the_table(site: dict) -> None:
    """A database from before consent requests has no requests table: opening one adds it
    and keeps everything else (an additive table, so the schema number stays)."""
    cfg = site["cfg"]
    (fid,) = put(cfg, FHIR)
    db_path = load_config(cfg).state_path / "state.db"
    import sqlite3

    raw = sqlite3.connect(db_path)
    raw.execute("DROP TABLE requests")
    raw.commit()
    raw.close()
    db = StateDB(db_path)
    assert db.request_rows() == [] and db.file(fid) is not None
    assert db.get_meta("schema") == str(SCHEMA_VERSION)
    db.close()
    assert cli_json(cfg, "requests") == []


# ---------------------------------------------------------------- inline payload checks

EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "300"))


def _valid_inline() -> dict:
    from dispersiond.share.inline import pack

    rec = pack("ABCDEFGHIJKLMNOP", "csv", b"a,b\n1,2\n", bytes(32), deidentified=True,
               warnings=("w",), report={"removed": 1})
    return {"v": 3, "type": "inline", "export": True, "created": 1, "role": "institute",
            "request": None, "purpose": None, "use_until": None, "override_reason": None,
            "files": [rec.entry]}


def test_inline_payload_checks_refuse_anything_malformed() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from dispersiond.share import BundleFormatError, check_payload

    assert check_payload(_valid_inline())["files"][0]["name"] == "ABCDEFGHIJKLMNOP.csv"
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(
                              st.text(max_size=8), c, max_size=3), max_leaves=10)
    top = list(_valid_inline())
    entry = list(_valid_inline()["files"][0])

    @settings(max_examples=EXAMPLES, deadline=5000, derandomize="CI" in os.environ,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(top + [f"files.{k}" for k in entry]), values)
    def run(field: str, value) -> None:
        p = _valid_inline()
        if field.startswith("files."):
            p["files"][0][field[6:]] = value
        else:
            p[field] = value
        try:
            check_payload(p)
        except BundleFormatError as exc:
            assert "\n" not in str(exc)

    run()
    bad = _valid_inline()
    bad["files"][0]["name"] = "../escape"
    import pytest

    with pytest.raises(BundleFormatError, match="record name"):
        check_payload(bad)
