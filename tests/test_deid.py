"""De-identification on real files: pydicom's bundled test files (several modalities, private
tags, patient names, ids, birth and study dates) and the repository's FHIR, HL7 and CSV
samples. Every check reads the output back with pydicom / json / hl7 and compares it with the
input; the profile's attribute lists come from dicom-anonymizer's Table E.1-1, not from the
code under test."""
from __future__ import annotations

import io
import json
import re
from datetime import date
from importlib import resources

import hl7
import pydicom
import pytest
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from dispersiond.deid import (CsvPolicy, DeidPolicy, DeidRefused, DicomPolicy, Hl7Policy,
                              deidentify, detect_kind, recipient_secret)
from dispersiond.deid import pseudonym as ps
from dispersiond.deid.dicom import PROFILE_EDITION, RETAIN_DEVICE_IDENTITY
from dispersiond.errors import DispersiondError

KEY_A = recipient_secret(b"device-master-key-0123456789abcdef", "pk-institute-a", "institute-a")
KEY_B = recipient_secret(b"device-master-key-0123456789abcdef", "pk-institute-b", "institute-b")
POLICY = DeidPolicy()
TODAY = date(2026, 6, 1)
DICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm", "rtplan.dcm",
               "waveform_ecg.dcm", "test-SR.dcm", "examples_palette.dcm", "JPEG2000.dcm",
               "SC_rgb_small_odd.dcm", "reportsi.dcm"]
VITALS_COLUMNS = {"timestamp": "year", "patient_id": "pseudonym", "heart_rate_bpm": "keep",
                  "systolic_mmhg": "keep", "diastolic_mmhg": "keep", "spo2_pct": "keep",
                  "temp_c": "keep"}


def sample(name: str) -> bytes:
    return resources.files("dispersiond").joinpath("samples", name).read_bytes()


def dicom_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


# ---------------------------------------------------------------- DICOM

def _table() -> dict[str, set]:
    t = dicom_anonymization_database_selector(PROFILE_EDITION)
    return {k: {pydicom.tag.Tag(x) for x in v if len(x) == 2} for k, v in t.items() if k != "ALL_TAGS"}


def _walk(ds: pydicom.Dataset, path: tuple = ()):
    for elem in ds:
        yield path + (elem.tag,), elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, path + (elem.tag, i))


def _at(ds: pydicom.Dataset, path: tuple):
    """The element at `path` in ds, or None when it (or an enclosing item) is gone."""
    node = ds
    for step in path[:-1]:
        if isinstance(step, int):
            if step >= len(node):
                return None
            node = node[step]
        else:
            if step not in node:
                return None
            node = node[step].value
    return node.get(path[-1]) if isinstance(node, pydicom.Dataset) else None


@pytest.mark.parametrize("name", DICOM_FILES)
def test_dicom_profile_attributes_lose_their_values(name):
    src = read(dicom_bytes(name))
    res = deidentify(dicom_bytes(name), None, POLICY, KEY_A)
    out = read(res.data)
    assert res.kind == "dicom"
    table = _table()
    listed = set().union(*table.values()) - table["X_Z_U_STAR_TAGS"]
    checked = 0
    for path, elem in _walk(src):
        if elem.tag not in listed or elem.is_empty or elem.VR == "SQ":
            continue
        new = _at(out, path)
        if elem.tag in table["X_TAGS"]:
            assert new is None, f"{elem.keyword} should be removed"
        elif new is not None and not new.is_empty:
            assert new.value != elem.value, f"{elem.keyword} kept its value"
        checked += 1
    assert checked >= 5
    assert not any(e.tag.is_private for e in out.iterall())
    assert out.PatientIdentityRemoved == "YES"
    assert "113100" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != src.SOPInstanceUID
    assert UID(out.SOPInstanceUID).is_valid and out.SOPClassUID == src.SOPClassUID
    # the output is still a valid Part 10 file whose values match their VRs
    with pydicom.config.strict_reading():
        for e in read(res.data).iterall():
            _ = e.value
    if "PixelData" in src:
        assert out.PixelData == src.PixelData  # pixels are never altered, only flagged


def test_dicom_identity_values_gone_and_private_tags_removed():
    raw = dicom_bytes("CT_small.dcm")
    src = read(raw)
    assert sum(e.tag.is_private for e in src.iterall()) > 100
    originals = [str(src.PatientName), src.PatientID, src.StudyDate, src.InstitutionName,
                 src.StudyInstanceUID, src.SeriesInstanceUID]
    res = deidentify(raw, None, POLICY, KEY_A)
    out = read(res.data)
    text = [str(e.value) for e in out.iterall() if e.VR not in ("OB", "OW", "UN")]
    for value in originals:
        assert not any(value in t for t in text), value
    assert res.report["private_removed"] == sum(e.tag.is_private for e in src.iterall())
    assert res.report["removed"] >= 1 and res.report["uid_replaced"] >= 3
    # the report holds counts, never values
    assert all(isinstance(v, int) for v in res.report.values())
    assert not any(v in json.dumps(res.report) for v in originals)
    assert out.PatientID == ps.pseudonym(KEY_A, src.PatientID, 16)
    assert (out.pixel_array == src.pixel_array).all()
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_dicom_uids_consistent_across_one_study_and_unlinkable_across_recipients():
    a1 = read(deidentify(dicom_bytes("MR_small.dcm"), None, POLICY, KEY_A).data)
    a2 = read(deidentify(dicom_bytes("MR_small_RLE.dcm"), "dicom", POLICY, KEY_A).data)
    b1 = read(deidentify(dicom_bytes("MR_small.dcm"), None, POLICY, KEY_B).data)
    src = read(dicom_bytes("MR_small.dcm"))
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert a1[kw].value == a2[kw].value != src[kw].value
        assert b1[kw].value != a1[kw].value
    assert a1.PatientID == a2.PatientID != b1.PatientID
    assert a1.PatientID != src.PatientID


def test_dicom_retain_modified_dates_shifts_per_patient_and_recipient():
    policy = DeidPolicy(dicom=DicomPolicy(retain_modified_dates=True, max_date_shift_days=400))
    src = read(dicom_bytes("CT_small.dcm"))
    out_a = read(deidentify(dicom_bytes("CT_small.dcm"), None, policy, KEY_A).data)
    out_b = read(deidentify(dicom_bytes("CT_small.dcm"), None, policy, KEY_B).data)

    def days(ds, kw):
        return date.fromisoformat(ds[kw].value[:4] + "-" + ds[kw].value[4:6] + "-" + ds[kw].value[6:8])

    shift_a = (days(out_a, "StudyDate") - days(src, "StudyDate")).days
    shift_b = (days(out_b, "StudyDate") - days(src, "StudyDate")).days
    assert -400 <= shift_a <= -1 and -400 <= shift_b <= -1 and shift_a != shift_b
    # one patient's intervals survive: the series is as far from the study as before
    assert (days(out_a, "SeriesDate") - days(out_a, "StudyDate")) == \
        (days(src, "SeriesDate") - days(src, "StudyDate"))
    assert out_a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in [i.CodeValue for i in out_a.DeidentificationMethodCodeSequence]
    assert not out_a.get("PatientBirthDate")  # a patient characteristic, not longitudinal


def test_dicom_retain_device_identity_option():
    src = read(dicom_bytes("MR_small.dcm"))
    kept = read(deidentify(dicom_bytes("MR_small.dcm"), None,
                           DeidPolicy(dicom=DicomPolicy(retain_device_identity=True)), KEY_A).data)
    basic = read(deidentify(dicom_bytes("MR_small.dcm"), None, POLICY, KEY_A).data)
    for kw in ("StationName", "DeviceSerialNumber"):
        assert kept[kw].value == src[kw].value
        assert basic.get(kw) is None or basic[kw].value != src[kw].value
    assert "113109" in [i.CodeValue for i in kept.DeidentificationMethodCodeSequence]
    assert all(pydicom.datadict.tag_for_keyword(k) for k in RETAIN_DEVICE_IDENTITY)


def test_dicom_burned_in_candidates_flagged_or_refused():
    us = deidentify(dicom_bytes("examples_palette.dcm"), None, POLICY, KEY_A)
    assert any("burned-in" in w for w in us.warnings) and us.report["burned_in_flagged"] == 1
    ct = deidentify(dicom_bytes("CT_small.dcm"), None, POLICY, KEY_A)
    assert ct.warnings == ()
    ds = read(dicom_bytes("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert any("YES" in w for w in deidentify(buf.getvalue(), None, POLICY, KEY_A).warnings)
    strict = DeidPolicy(dicom=DicomPolicy(burned_in="refuse"))
    with pytest.raises(DeidRefused, match="burned-in text.*burned_in"):
        deidentify(dicom_bytes("examples_palette.dcm"), None, strict, KEY_A)
    with pytest.raises(DeidRefused, match="burned-in"):
        deidentify(buf.getvalue(), None, strict, KEY_A)


def test_dicom_without_part10_header_or_instance_refused():
    with pytest.raises(DeidRefused, match="unrecognised format"):
        deidentify(dicom_bytes("rtstruct.dcm")[:0] + dicom_bytes("no_meta.dcm"), None, POLICY, KEY_A)
    with pytest.raises(DeidRefused, match="no SOP Class or SOP Instance UID"):
        deidentify(dicom_bytes("nested_priv_SQ.dcm"), None, POLICY, KEY_A)
    with pytest.raises(DeidRefused, match="DICOM: the file could not be parsed"):
        deidentify(dicom_bytes("CT_small.dcm")[:1000], None, POLICY, KEY_A)


# ---------------------------------------------------------------- FHIR

def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolves(bundle: dict, ref: str) -> bool:
    for e in bundle["entry"]:
        r = e["resource"]
        if ref == e.get("fullUrl") or ref == f"{r['resourceType']}/{r['id']}":
            return True
        if e.get("fullUrl", "").endswith("/" + ref):
            return True
    return False


def test_fhir_sample_bundle_safe_harbor():
    raw = sample("patient-bundle.fhir.json")
    src = json.loads(raw)
    res = deidentify(raw, None, POLICY, KEY_A, today=TODAY)
    out = json.loads(res.data)
    Bundle.model_validate(out)  # still a valid FHIR Bundle
    assert res.kind == "fhir"
    pat_in, pat = src["entry"][0]["resource"], out["entry"][0]["resource"]
    for key in ("name", "telecom"):
        assert key not in pat
    assert pat["birthDate"] == "1980"
    assert all(set(a) <= {"use", "type", "state", "country", "postalCode"} for a in pat.get("address", []))
    originals = {pat_in["identifier"][0]["value"], "Exemple", "Camille", pat_in["telecom"][0]["value"],
                 pat_in["address"][0]["line"][0], "Lyon", "69003", pat_in["id"],
                 src["entry"][0]["fullUrl"]}
    strings = _strings(out)
    assert not originals & set(strings)
    dated = [s for s in strings if re.match(r"^\d{4}-\d{2}", s)]
    assert dated == []  # every date kept its year only
    refs = _refs(out)
    assert refs and all(_resolves(out, r) for r in refs)
    again = json.loads(deidentify(raw, None, POLICY, KEY_A, today=TODAY).data)
    other = json.loads(deidentify(raw, None, POLICY, KEY_B, today=TODAY).data)
    assert again == out
    assert other["entry"][0]["resource"]["id"] != pat["id"]
    assert other["entry"][0]["resource"]["identifier"] != pat["identifier"]


RICH_BUNDLE = {
    "resourceType": "Bundle", "type": "collection", "timestamp": "2026-01-02T03:04:05Z",
    "link": [{"relation": "self", "url": "https://ehr.example.org/fhir/Patient?identifier=555-12-3456"}],
    "entry": [
        {"fullUrl": "https://ehr.example.org/fhir/Patient/p1",
         "resource": {
             "resourceType": "Patient", "id": "p1",
             "meta": {"lastUpdated": "2026-01-02T03:04:05Z", "source": "ehr-node-7",
                      "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"]},
             "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Roe, 12 Elm St</div>"},
             "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "555-12-3456"}],
             "name": [{"family": "Roe", "given": ["Jane"]}],
             "telecom": [{"system": "email", "value": "jane.roe@example.org"}],
             "birthDate": "1930-02-03",
             "address": [{"line": ["12 Elm St"], "city": "Cambridge", "state": "MA", "postalCode": "02139",
                          "country": "US"},
                         {"line": ["1 Hill Rd"], "city": "Smalltown", "state": "NH", "postalCode": "03601"}],
             "photo": [{"contentType": "image/jpeg", "data": "aGVsbG8="}],
             "contact": [{"name": {"family": "Roe", "given": ["John"]},
                          "telecom": [{"system": "phone", "value": "+1 617 555 0100"}]}],
             "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                            "valueAddress": {"city": "Springfield", "state": "IL", "country": "US"}}],
             "generalPractitioner": [{"reference": "https://ehr.example.org/fhir/Practitioner/dr9",
                                      "display": "Dr. Gregory House"}]}},
        {"fullUrl": "https://ehr.example.org/fhir/Observation/o1",
         "resource": {
             "resourceType": "Observation", "id": "o1", "status": "final",
             "code": {"text": "Body weight"},
             "subject": {"reference": "Patient/p1", "display": "Jane Roe"},
             "effectivePeriod": {"start": "2026-03-01T08:00:00Z", "end": "2026-03-02"},
             "issued": "2026-03-02T09:00:00Z",
             "note": [{"text": "Jane said her neighbour Bob drove her"}],
             "valueQuantity": {"value": 70, "unit": "kg"}}},
    ]}


def test_fhir_rich_bundle_identifiers_generalised_and_still_valid():
    raw = json.dumps(RICH_BUNDLE).encode()
    res = deidentify(raw, None, POLICY, KEY_A, today=TODAY)
    out = json.loads(res.data)
    Bundle.model_validate(out)
    strings = set(_strings(out))
    for gone in ("Roe", "Jane", "John", "jane.roe@example.org", "555-12-3456", "12 Elm St", "Cambridge",
                 "Springfield", "aGVsbG8=", "ehr-node-7", "Dr. Gregory House", "Jane Roe", "p1", "o1",
                 "Jane said her neighbour Bob drove her", "+1 617 555 0100"):
        assert gone not in strings and not any(gone in s for s in strings if len(gone) > 3), gone
    assert not any("ehr.example.org" in s for s in strings)
    pat = out["entry"][0]["resource"]
    assert "birthDate" not in pat  # older than 89: Safe Harbor aggregates to 90+
    assert pat["address"][0] == {"state": "MA", "postalCode": "021", "country": "US"}
    assert pat["address"][1] == {"state": "NH", "postalCode": "000"}
    assert pat["extension"][0]["valueAddress"] == {"state": "IL", "country": "US"}
    assert "timestamp" not in out and "link" not in out
    obs = out["entry"][1]["resource"]
    assert obs["effectivePeriod"] == {"start": "2026", "end": "2026"} and "issued" not in obs
    assert all(_resolves(out, r) for r in _refs(out) if not r.startswith("Practitioner/"))
    assert res.report["name_removed"] >= 2 and res.report["photo_removed"] == 1
    assert any("attachment" in w for w in res.warnings) or res.report.get("photo_removed")


def test_fhir_single_resource_validates():
    raw = json.dumps(RICH_BUNDLE["entry"][0]["resource"]).encode()
    out = json.loads(deidentify(raw, "fhir", POLICY, KEY_A, today=TODAY).data)
    Patient.model_validate(out)
    assert out["id"] == json.loads(deidentify(json.dumps(RICH_BUNDLE).encode(), None, POLICY, KEY_A,
                                              today=TODAY).data)["entry"][0]["resource"]["id"]


_word = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=8, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_word, min_size=1, max_size=3), phone=_word, line=_word, city=_word,
       rtype=st.sampled_from(["Patient", "Practitioner", "RelatedPerson", "Person"]),
       nested=st.booleans())
def test_property_fhir_never_keeps_name_telecom_address_line(names, phone, line, city, rtype, nested):
    res = {"resourceType": rtype, "id": "x1",
           "name": [{"family": names[0], "given": names[1:]}],
           "telecom": [{"system": "phone", "value": phone}],
           "address": [{"line": [line], "city": city, "state": "CA"}]}
    doc = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": res}]} if nested else res
    out = deidentify(json.dumps(doc).encode(), None, POLICY, KEY_A, today=TODAY).data.decode()
    for secret in names + [phone, line, city]:
        assert secret not in out


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                     max_leaves=25)


@settings(max_examples=150, deadline=None)
@given(body=st.dictionaries(st.text(max_size=12), _json, max_size=6), rtype=st.text(min_size=1, max_size=12))
def test_property_fhir_arbitrary_json_returns_or_refuses(body, rtype):
    doc = {**body, "resourceType": rtype}
    try:
        out = deidentify(json.dumps(doc).encode(), None, POLICY, KEY_A, today=TODAY)
    except DeidRefused as e:
        assert str(e)
    else:
        assert isinstance(json.loads(out.data), dict)


# ---------------------------------------------------------------- HL7 v2

def test_hl7_sample_oru():
    raw = sample("vitals-oru.hl7")
    src = hl7.parse(raw.decode().replace("\n", "\r"))
    res = deidentify(raw, None, POLICY, KEY_A)
    out = hl7.parse(res.data.decode())
    assert res.kind == "hl7v2"
    assert [str(s[0]) for s in out] == [str(s[0]) for s in src]
    pid_in, pid = src.segment("PID"), out.segment("PID")
    for n in (3, 5, 11):
        assert str(pid[n]) != str(pid_in[n])
    assert "PAT0001" not in res.data.decode() and "EXEMPLE" not in res.data.decode()
    assert "LYON" not in res.data.decode() and "+33123456789" not in res.data.decode()
    assert str(pid[7]) == "1980" and str(pid[13]) == ""
    assert str(out.segment("MSH")[10]) != str(src.segment("MSH")[10])
    assert str(out.segment("MSH")[7]) == "2026"
    assert [str(s[5]) for s in out.segments("OBX")] == [str(s[5]) for s in src.segments("OBX")]
    # the patient's pseudonym is keyed on the id: the same in the CSV export of the same patient
    csv_out = deidentify(sample("vitals.csv"), None, DeidPolicy(csv=CsvPolicy(columns=VITALS_COLUMNS)), KEY_A)
    assert str(pid[3]) in csv_out.data.decode()


ADT = ("MSH|^~\\&|ADT|HOSP|LAB|HOSP|20260101120000||ADT^A01|CTRL42|P|2.5.1\r"
       "EVN|A01|20260101120000|||NURSE^ANNA\r"
       "PID|1||MRN778^^^HOSP^MR~999-88-7777^^^SSA^SS||DOE^JOHN^Q||19451203|M|||1 Main St^^Boston^MA^02115^US||^PRN^PH^^^617^5550199\r"
       "NK1|1|DOE^JANE|SPO|1 Main St^^Boston^MA^02115\r"
       "PV1|1|I|W4^401^B|||||1234^WELBY^MARCUS|||||||||||VN5566|||||||||||||||||||||||||20260101120000\r"
       "OBX|1|TX|11506-3^Progress note^LN||Patient John Doe seen with his wife Jane||||||F\r"
       "NTE|1||Call Jane Doe at home\r"
       "ZPI|1|SECRET-SITE-FIELD\r")


def test_hl7_adt_identity_segments_and_free_text():
    res = deidentify(ADT.encode(), None, POLICY, KEY_A)
    text = res.data.decode()
    out = hl7.parse(text)
    assert [str(s[0]) for s in out] == ["MSH", "EVN", "PID", "PV1", "OBX"]
    for gone in ("MRN778", "999-88-7777", "DOE", "JOHN", "1 Main St", "Boston", "5550199", "WELBY",
                 "VN5566", "CTRL42", "Jane", "SECRET-SITE-FIELD", "ANNA", "W4^401"):
        assert gone not in text, gone
    pid = out.segment("PID")
    assert str(pid[11]) == "^^^MA^021^US" and str(pid[7]) == "1945"
    assert str(out.segment("PV1")[44]) == "2026"
    assert res.report["segment_dropped"] == 3 and res.report["free_text_removed"] == 1
    assert any("ZPI" in w for w in res.warnings)
    with pytest.raises(DeidRefused, match="segment ZPI has no de-identification rules"):
        deidentify(ADT.encode(), None, DeidPolicy(hl7=Hl7Policy(unknown_segments="refuse")), KEY_A)
    kept = deidentify(ADT.encode(), None, DeidPolicy(hl7=Hl7Policy(fields={"PV1": {3: "keep"}})), KEY_A)
    assert "W4^401^B" in kept.data.decode()


@settings(max_examples=150, deadline=None)
@given(tail=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_property_hl7_arbitrary_text_returns_or_refuses(tail):
    data = ("MSH|^~\\&|" + tail).encode()
    try:
        out = deidentify(data, None, POLICY, KEY_A)
    except DeidRefused as e:
        assert str(e)
    else:
        assert out.data.startswith(b"MSH")
        hl7.parse(out.data.decode().split("\r")[0])


# ---------------------------------------------------------------- CSV

def test_csv_named_columns():
    raw = sample("vitals.csv")
    res = deidentify(raw, None, DeidPolicy(csv=CsvPolicy(columns={**VITALS_COLUMNS, "temp_c": "drop"})), KEY_A)
    lines = res.data.decode().splitlines()
    src_lines = raw.decode().splitlines()
    assert lines[0] == "timestamp,patient_id,heart_rate_bpm,systolic_mmhg,diastolic_mmhg,spo2_pct"
    assert len(lines) == len([ln for ln in src_lines if ln.strip()])
    first, src_first = lines[1].split(","), src_lines[1].split(",")
    assert first[0] == src_first[0][:4] and first[1] == ps.pseudonym(KEY_A, "PAT0001", 16)
    assert first[2:] == src_first[2:6]
    assert "PAT0001" not in res.data.decode()
    assert res.report["column_dropped"] == 1


def test_csv_unknown_columns_refused_by_default():
    with pytest.raises(DeidRefused, match=r"CSV: 7 column\(s\) have no rule.*deid.csv.columns"):
        deidentify(sample("vitals.csv"), None, POLICY, KEY_A)
    dropped = deidentify(sample("vitals.csv"), None,
                         DeidPolicy(csv=CsvPolicy(columns={"spo2_pct": "keep"}, unknown_columns="drop")), KEY_A)
    assert dropped.data.decode().splitlines()[0] == "spo2_pct" and dropped.warnings
    with pytest.raises(DeidRefused, match="a row has 2 cells where the header has 3"):
        deidentify(b"a,b,c\n1,2\n", "csv", DeidPolicy(csv=CsvPolicy(columns=dict.fromkeys("abc", "keep"))), KEY_A)


# ---------------------------------------------------------------- kinds, keys, refusals

def test_detect_kind_and_refusals():
    assert detect_kind(dicom_bytes("CT_small.dcm")) == "dicom"
    assert detect_kind(sample("patient-bundle.fhir.json")) == "fhir"
    assert detect_kind(sample("vitals-oru.hl7")) == "hl7v2"
    assert detect_kind(sample("vitals.csv")) == "csv"
    assert detect_kind(b"only one line", "export.csv") == "csv"
    for data in (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", b"\x89PNG\r\n\x1a\n" + bytes(64),
                 b"plain prose without any table in it", bytes(range(256))):
        with pytest.raises(DeidRefused, match="unrecognised format.*doctor") as err:
            deidentify(data, None, POLICY, KEY_A)
        assert isinstance(err.value, DispersiondError)
    with pytest.raises(DeidRefused, match="not a FHIR resource"):
        detect_kind(b'{"hello": "world"}')
    with pytest.raises(DeidRefused, match="declared hl7v2 but reads as fhir"):
        deidentify(sample("patient-bundle.fhir.json"), "hl7v2", POLICY, KEY_A)
    with pytest.raises(DeidRefused, match="unknown kind"):
        deidentify(sample("vitals.csv"), "xlsx", POLICY, KEY_A)
    with pytest.raises(DeidRefused, match="shorter than 16 bytes"):
        deidentify(sample("vitals.csv"), None, POLICY, b"short")


def test_pseudonyms_stable_per_recipient_unlinkable_across():
    assert ps.pseudonym(KEY_A, "PAT0001") == ps.pseudonym(KEY_A, "PAT0001")
    assert ps.pseudonym(KEY_A, "PAT0001") != ps.pseudonym(KEY_B, "PAT0001")
    assert ps.pseudonym(KEY_A, "PAT0001") != ps.pseudonym(KEY_A, "PAT0002")
    same = recipient_secret(b"device-master-key-0123456789abcdef", "pk-institute-a", "institute-a")
    assert same == KEY_A
    rekeyed = recipient_secret(b"device-master-key-0123456789abcdef", "pk-new", "institute-a")
    assert rekeyed != KEY_A
    other_device = recipient_secret(b"another-device-key-0123456789abcd", "pk-institute-a", "institute-a")
    assert other_device != KEY_A
    u = ps.uid(KEY_A, "1.2.3.4")
    assert UID(u).is_valid and len(u) <= 64 and u.startswith("2.25.") and u != ps.uid(KEY_B, "1.2.3.4")
    assert ps.uuid_urn(KEY_A, "x").startswith("urn:uuid:")
    shifts = {ps.date_shift_days(KEY_A, f"P{i}", 30) for i in range(200)}
    assert shifts <= set(range(-30, 0)) and len(shifts) > 20


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), name=st.sampled_from([None, "x.bin", "x.csv", "x.json"]))
def test_property_arbitrary_bytes_return_or_refuse(data, name):
    policy = DeidPolicy(csv=CsvPolicy(unknown_columns="drop"))
    try:
        deidentify(data, None, policy, KEY_A, name_hint=name)
    except DeidRefused as e:
        assert str(e) and "Traceback" not in str(e)
