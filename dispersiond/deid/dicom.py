"""DICOM Part 10: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Library choice (evaluated against the profile):
- `dicom-anonymizer` ships Table E.1-1 itself, generated from the standard per edition
  (D/Z/X/U and the combined codes, the repeating groups), so no tag list is kept here for the
  Basic Profile. Its own engine falls short of the profile, so only its table is used: it
  applies rules to the top level only (the profile covers nested sequences), replaces UIDs
  with random ones held in a module-global dict (not keyed, not per recipient, not thread
  safe), writes 00010101 for removed dates and has no option columns.
- `deid` applies a CTP-derived recipe, not Table E.1-1, and removes every UID by default
  (the output no longer references itself; SOP Instance UID is Type 1).
- `dicognito` replaces names, ids, UIDs and dates consistently, but keeps the attributes the
  profile removes (comments, descriptions, most of the X list), keeps private tags and keys
  its values with MD5 under a seed.
The keyed values (UIDs, pseudonyms, date shifts) come from `pseudonym`, so two files of one
study shared with one recipient agree, and two recipients' copies cannot be joined.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Callable

import pydicom
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from . import pseudonym as ps
from .outcome import DeidRefused, Tally
from .policy import DicomPolicy

PROFILE_EDITION = "dicomfields_2026c"
_CATEGORY = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D",
             "X_Z_TAGS": "X/Z", "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D",
             "X_Z_U_STAR_TAGS": "X/Z/U*"}
# The profile's combined codes depend on the attribute's Type in the IOD, which pydicom does
# not know. The choice that is valid for every Type is taken; it reveals nothing more, since a
# zero-length or dummy value carries no information: X/Z -> Z, X/D and Z/D and X/Z/D -> D.
# X/Z/U* (reference sequences) keeps the sequence; its items are processed like any dataset,
# so the UIDs inside are replaced and the rest follows the table.
_RESOLVE = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "K"}

# Retain Device Identity Option (113109): the attributes Table E.1-1 marks K in its
# "Rtn. Dev. Id." column. dicom-anonymizer has no option columns, so this column is carried
# here, by keyword (the attributes the column marks C, AE titles, keep their Basic action).
RETAIN_DEVICE_IDENTITY = frozenset({
    "BeamHoldTransitionDateTime", "CalibrationDate", "CalibrationDateTime", "CalibrationTime",
    "CassetteID", "DateOfLastCalibration", "DateOfLastDetectorCalibration",
    "DateTimeOfLastCalibration", "DetectorID", "DeviceDescription", "DeviceLabel",
    "DeviceSerialNumber", "DeviceUID", "GantryID", "GeneratorID", "LensMake", "LensModel",
    "LensSerialNumber", "LensSpecification", "ManufacturerDeviceClassUID",
    "ManufacturerDeviceIdentifier", "ModifyingDeviceID", "ModifyingSystem",
    "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
    "PerformedStationNameCodeSequence", "PlateID", "ScheduledProcedureStepLocation",
    "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationName",
    "ScheduledStationNameCodeSequence", "ScheduledStudyLocation", "SourceManufacturer",
    "SourceSerialNumber", "StationName", "TimeOfLastCalibration", "TimeOfLastDetectorCalibration",
    "TransducerIdentificationSequence", "TreatmentMachineName", "UDISequence",
    "UniqueDeviceIdentifier", "XRayDetectorID", "XRayDetectorLabel", "XRaySourceID",
})
# Retain Longitudinal Temporal Information with Modified Dates (113107) marks every date and
# time of the profile C, except the patient's birth date and time (a patient characteristic):
# so that option is a rule on the VR, not a list.
_NOT_LONGITUDINAL = frozenset({Tag("PatientBirthDate"), Tag("PatientBirthTime")})

# Modalities whose pixel data commonly carries burned-in text (ultrasound, secondary capture,
# photographs, scanned documents): flagged unless BurnedInAnnotation says NO.
BURNED_IN_MODALITIES = frozenset({"US", "OT", "SC", "XC", "ES", "GM", "DOC", "IVUS"})

_PATIENT_ID = Tag("PatientID")
_PATIENT_NAME = Tag("PatientName")
_DATE_VRS = frozenset({"DA", "DT"})
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
# Codes of CID 7050 (De-identification Method) for what is done here.
_CODES = {"basic": ("113100", "Basic Application Confidentiality Profile"),
          "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
          "device": ("113109", "Retain Device Identity Option")}


@dataclass(frozen=True)
class _Profile:
    single: dict[BaseTag, str]
    masked: tuple[tuple[int, int, int, int, str], ...]

    def action(self, tag: BaseTag) -> str | None:
        code = self.single.get(tag)
        if code is None:
            for group, elem, gmask, emask, c in self.masked:
                if tag.group & gmask == group & gmask and tag.element & emask == elem & emask:
                    code = c
                    break
        return _RESOLVE.get(code, code) if code else None


@lru_cache(maxsize=1)
def profile() -> _Profile:
    """Table E.1-1 as shipped by dicom-anonymizer, indexed for lookup."""
    tables = dicom_anonymization_database_selector(PROFILE_EDITION)
    single: dict[BaseTag, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORY.items():
        for entry in tables[category]:
            if len(entry) == 2:
                single[Tag(entry)] = code
            else:
                masked.append((*entry, code))
    return _Profile(single, tuple(masked))


@dataclass
class _Context:
    secret: bytes
    policy: DicomPolicy
    shift: int | None
    tally: Tally
    patient: str  # the original Patient ID (or name when there is none): the pseudonym's key


def deidentify(data: bytes, policy: DicomPolicy, secret: bytes, tally: Tally) -> bytes:
    ds = read(data)
    _guard_burned_in(ds, policy, tally)
    patient = str(ds.get("PatientID", "") or "").strip() \
        or str(ds.get("PatientName", "") or "").strip()
    shift = ps.date_shift_days(secret, patient, policy.max_date_shift_days) \
        if policy.retain_modified_dates else None
    ctx = _Context(secret, policy, shift, tally, patient)
    keep = {Tag(tag_for_keyword(k)) for k in RETAIN_DEVICE_IDENTITY} \
        if policy.retain_device_identity else set()
    private = sum(1 for e in ds.iterall() if e.tag.is_private)
    ds.remove_private_tags()  # the profile's X for private attributes (no Retain Safe Private)
    tally.add("private_removed", private)
    ds.walk(lambda d, e: _apply(d, e, ctx, keep))
    _mark(ds, policy)
    ds.file_meta = _file_meta(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read(data: bytes) -> Dataset:
    """Parse DICOM Part 10 bytes; anything else is refused with the reason."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise DeidRefused("DICOM: not a Part 10 file (no DICM preamble); export it as a DICOM "
                          "Part 10 file before sharing it de-identified")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.decode()
        for _ in ds.iterall():
            pass
    except (InvalidDicomError, ValueError, KeyError, TypeError, EOFError, OSError,
            NotImplementedError) as e:
        raise DeidRefused(f"DICOM: the file could not be parsed ({type(e).__name__}); check "
                          "that it opens in a DICOM viewer, then share it again") from None
    return ds


def _guard_burned_in(ds: Dataset, policy: DicomPolicy, tally: Tally) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
    modality = str(ds.get("Modality", "") or "").upper()
    sop = ds.get("SOPClassUID")
    secondary = sop is not None and "Secondary Capture" in getattr(sop, "name", "") \
        and modality not in BURNED_IN_MODALITIES
    reason = None
    if burned == "YES":
        reason = "BurnedInAnnotation is YES"
    elif burned != "NO" and (modality in BURNED_IN_MODALITIES or secondary):
        reason = "a secondary capture image" if secondary else f"modality {modality}"
        reason += " often carries text in its pixels"
    if reason is None:
        return
    if policy.burned_in == "refuse":
        raise DeidRefused(f"DICOM: pixel data may carry burned-in text ({reason}); the policy "
                          "refuses such files (dicom.burned_in: refuse): clean the pixels first "
                          "or set burned_in: flag to share with a warning")
    tally.warn(f"pixel data may carry burned-in text ({reason}): pixels are not cleaned, "
               "review the images before the recipient uses them")
    tally.add("burned_in_flagged")


def _apply(ds: Dataset, elem: DataElement, ctx: _Context, keep: set[BaseTag]) -> None:
    tag = elem.tag
    if tag in keep:
        ctx.tally.add("kept_device_identity")
        return
    if ctx.shift is not None and elem.VR in _DATE_VRS and tag not in _NOT_LONGITUDINAL \
            and profile().action(tag) is not None:
        _shift(ds, elem, ctx)
        return
    action = profile().action(tag)
    if action is None or action == "K":
        return
    if action == "X":
        del ds[tag]
        ctx.tally.add("removed")
    elif tag in (_PATIENT_ID, _PATIENT_NAME):
        _pseudonymise_patient(ds, elem, ctx)
    elif action == "Z":
        if not elem.is_empty:
            elem.value = Sequence() if elem.VR == "SQ" else None
            ctx.tally.add("emptied")
    elif action == "U":
        if not elem.is_empty and elem.VR == "UI":
            elem.value = [ps.uid(ctx.secret, str(v)) for v in elem.value] if elem.VM > 1 \
                else ps.uid(ctx.secret, str(elem.value))
            ctx.tally.add("uid_replaced")
    elif action == "D":
        if not elem.is_empty:
            _dummy(elem, ctx)
            ctx.tally.add("replaced")


def _pseudonymise_patient(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    """Patient ID and Name are Z in the profile, which allows a dummy value: a keyed
    pseudonym of the Patient ID, so the recipient's study can link the patient's files."""
    if not ctx.patient:
        if not elem.is_empty:
            elem.value = None
            ctx.tally.add("emptied")
        return
    value = ps.pseudonym(ctx.secret, ctx.patient, 16)
    elem.value = value if elem.tag == _PATIENT_ID else f"ANON^{value}"
    ctx.tally.add("pseudonymised")


def _dummy(elem: DataElement, ctx: _Context) -> None:
    vr = elem.VR
    if vr == "SQ":
        for item in elem.value:
            for sub in list(item):
                if not sub.is_empty:
                    _dummy(sub, ctx)
        return
    text = ps.pseudonym(ctx.secret, str(elem.value), 16, domain="dummy")
    dummies: dict[str, Callable[[], object]] = {
        "PN": lambda: f"ANON^{text[:10]}", "CS": lambda: "ANONYMIZED", "AE": lambda: text,
        "SH": lambda: text, "LO": lambda: f"ANON-{text}",
        "UI": lambda: ps.uid(ctx.secret, str(elem.value)),
        "DA": lambda: "19000101", "DT": lambda: "19000101000000", "TM": lambda: "000000",
        "DS": lambda: "0", "IS": lambda: "0", "AS": lambda: "000Y",
        "UR": lambda: "urn:uuid:00000000-0000-0000-0000-000000000000",
    }
    if vr in dummies:
        elem.value = dummies[vr]()
    elif vr in _NUMERIC_VRS:
        elem.value = 0
    elif vr in _BYTES_VRS:
        elem.value = b"\x00\x00"
    else:  # ST, LT, UT, UC and anything newer: free text
        elem.value = "ANONYMIZED"


def _shift(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    if elem.is_empty:
        return
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    out = []
    for v in values:
        s = str(v).strip()
        moved = _shift_value(s, ctx.shift or 0)
        if moved is None:  # a partial or malformed date cannot be moved: the profile's action
            del ds[elem.tag]
            ctx.tally.add("removed")
            return
        out.append(moved)
    elem.value = out if len(out) > 1 else out[0]
    ctx.tally.add("date_shifted")


def _shift_value(value: str, days: int) -> str | None:
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        moved = date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days=days)
    except ValueError:
        return None
    return moved.strftime("%Y%m%d") + value[8:]


def _mark(ds: Dataset, policy: DicomPolicy) -> None:
    """Record what was done (PS3.15 E.1.1): Patient Identity Removed, the method and its codes."""
    used = ["basic"] + (["dates"] if policy.retain_modified_dates else []) \
        + (["device"] if policy.retain_device_identity else [])
    ds.PatientIdentityRemoved = "YES"
    suffix = {"dates": ", modified dates", "device": ", device identity retained"}
    ds.DeidentificationMethod = "PS3.15 Basic Profile" + "".join(suffix.get(u, "") for u in used)
    items = []
    for u in used:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = _CODES[u]
        item.CodingSchemeDesignator = "DCM"
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = \
        "MODIFIED" if policy.retain_modified_dates else "REMOVED"


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """A fresh File Meta group: only the transfer syntax and the (new) SOP identifiers, so no
    source AE title or sending application survives in group 0002."""
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise DeidRefused("DICOM: the file has no SOP Class or SOP Instance UID, so it is not a "
                          "complete DICOM instance; export it again from the modality or PACS")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    return meta
