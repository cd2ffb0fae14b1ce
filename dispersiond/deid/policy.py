"""What a recipient's de-identified share keeps, per format.

A recipient entry in the YAML can carry these settings under `deid:`; every default is the
safer choice, so an empty `deid:` (or none) gives the strictest share the format allows.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomPolicy(_Strict):
    """PS3.15 Annex E Basic Application Level Confidentiality Profile and two of its options."""

    # Retain Longitudinal Temporal Information with Modified Dates Option (113107): dates are
    # shifted by a per-recipient, per-patient number of days instead of being removed, so a
    # study keeps intervals (follow-up, dose timing) without calendar dates.
    retain_modified_dates: bool = False
    max_date_shift_days: Annotated[int, Field(ge=1, le=3650)] = 365
    # Retain Device Identity Option (113109): serial numbers, station names, device UIDs kept.
    retain_device_identity: bool = False
    # Pixel data is never cleaned: a file that may carry burned-in text is flagged in the
    # result's warnings, or refused outright.
    burned_in: Literal["flag", "refuse"] = "flag"


class FhirPolicy(_Strict):
    """HIPAA Safe Harbor (45 CFR 164.514(b)(2)) for FHIR R4 JSON."""

    # Keep the first three digits of a US ZIP code (Safe Harbor allows it unless the three-digit
    # area has 20,000 people or fewer; those areas become 000). Off: every postal code is removed.
    zip3: bool = True
    # Keep Address.state and Address.country (Safe Harbor allows the state).
    keep_state: bool = True


Hl7Action = Literal["keep", "remove", "pseudonym", "patient", "year", "address"]


class Hl7Policy(_Strict):
    """Field rules for HL7 v2 messages, merged over the built-in defaults (hl7v2.DEFAULT_FIELDS).

    `fields` maps a segment id to {field number: action}, e.g. {"PV1": {3: "keep"}}.
    """

    fields: dict[Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{2}$")],
                 dict[Annotated[int, Field(ge=1, le=999)], Hl7Action]] = {}
    # Segments removed whole: next of kin, free-text notes, guarantor, insurance, roles.
    drop_segments: tuple[str, ...] = ("NK1", "NTE", "GT1", "IN1", "IN2", "IN3", "ROL", "PD1", "PV2",
                                      "ACC", "TXA", "UB1", "UB2", "DG1", "PR1", "AL1", "MRG")
    # A segment with no rules (a site's Z segment, say) may carry anything: dropped by default
    # (with a warning), or the whole message refused.
    unknown_segments: Literal["drop", "refuse"] = "drop"


CsvAction = Literal["drop", "pseudonym", "keep", "year"]


class CsvPolicy(_Strict):
    """Columns by header name. A CSV export has no schema a tool could recognise, so every
    column must be named: an unlisted column refuses the share by default, because guessing
    that an unknown column is harmless is how identifiers leak."""

    columns: dict[str, CsvAction] = {}
    unknown_columns: Literal["refuse", "drop", "keep"] = "refuse"


class DeidPolicy(_Strict):
    """One recipient's de-identification settings."""

    dicom: DicomPolicy = DicomPolicy()
    fhir: FhirPolicy = FhirPolicy()
    hl7: Hl7Policy = Hl7Policy()
    csv: CsvPolicy = CsvPolicy()
