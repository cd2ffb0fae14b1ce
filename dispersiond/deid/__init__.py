"""De-identification for shares to institutes and the health authority (paper sections 3.1
and 4.2: "shared anonymously"). Pure: bytes in, bytes out, no I/O, no state.

`deidentify` recognises the format, applies the recipient's policy with the format's own
library and returns the new bytes with warnings and a count of what changed. A format it
cannot de-identify is refused (DeidRefused), never passed through.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import date

from .outcome import DeidRefused, DeidResult, Tally
from .policy import CsvPolicy, DeidPolicy, DicomPolicy, FhirPolicy, Hl7Policy
from .pseudonym import recipient_secret

__all__ = ["DeidPolicy", "DeidRefused", "DeidResult", "DicomPolicy", "FhirPolicy", "Hl7Policy",
           "CsvPolicy", "KINDS", "deidentify", "detect_kind", "recipient_secret"]

KINDS = ("dicom", "fhir", "hl7v2", "csv")
_CSV_SUFFIXES = (".csv", ".tsv")
_REFUSE_HINT = ("only DICOM Part 10, FHIR R4 JSON, HL7 v2 and CSV files can be shared "
                "de-identified; share this file with the responsible doctor (as stored) instead, "
                "or convert it to one of those formats")


def detect_kind(data: bytes, name_hint: str | None = None) -> str:
    """The format of `data`: 'dicom', 'fhir', 'hl7v2' or 'csv'; DeidRefused otherwise.

    Recognised by content (DICM preamble, a JSON object with resourceType, an MSH segment);
    CSV has no signature, so it needs a .csv/.tsv name or a consistent delimited table.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"MSH") and len(head) > 3:
        return "hl7v2"
    if head[:1] == b"{":
        try:
            doc = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("resourceType"), str):
            return "fhir"
        raise DeidRefused("de-identification: a JSON document that is not a FHIR resource "
                          "(no resourceType); " + _REFUSE_HINT)
    named_csv = bool(name_hint) and name_hint.lower().endswith(_CSV_SUFFIXES)
    if named_csv or _looks_like_csv(data):
        return "csv"
    raise DeidRefused("de-identification: unrecognised format; " + _REFUSE_HINT)


def _looks_like_csv(data: bytes) -> bool:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    lines = [ln for ln in text.splitlines() if ln.strip()][:20]
    if len(lines) < 2:
        return False
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t")
    except csv.Error:
        return False
    widths = {len(row) for row in csv.reader(io.StringIO("\n".join(lines)), dialect)}
    return len(widths) == 1 and widths.pop() >= 2


def deidentify(data: bytes, kind_hint: str | None, policy: DeidPolicy, key: bytes,
               name_hint: str | None = None, today: date | None = None) -> DeidResult:
    """De-identify one file for one recipient.

    `key` is the recipient's secret (pseudonym.recipient_secret): it keys every pseudonym,
    replacement UID and date shift. `kind_hint` ('dicom', 'fhir', 'hl7v2', 'csv'), when given,
    must match the content. `today` fixes the year Safe Harbor's age rule counts from.
    """
    if len(key) < 16:
        raise DeidRefused("de-identification: the recipient secret is shorter than 16 bytes; "
                          "derive it with recipient_secret()")
    try:
        kind = detect_kind(data, name_hint)
    except DeidRefused:
        if kind_hint != "csv":  # CSV has no signature: the caller's word is enough
            raise
        kind = "csv"
    if kind_hint is not None:
        if kind_hint not in KINDS:
            raise DeidRefused(f"de-identification: unknown kind {kind_hint!r}; "
                              f"use one of {', '.join(KINDS)}")
        if kind_hint != kind:
            raise DeidRefused(f"de-identification: the file was declared {kind_hint} but reads as "
                              f"{kind}; fix the declared kind or the file")
    # the format libraries (pydicom, hl7, ...) load on first use: the daemon, which only
    # reads the policies, does not carry them (tens of MiB of resident memory)
    from . import csvfile, dicom, fhir, hl7v2

    tally = Tally()
    year = (today or date.today()).year
    try:
        if kind == "dicom":
            out = dicom.deidentify(data, policy.dicom, key, tally)
        elif kind == "fhir":
            out = fhir.deidentify(data, policy.fhir, key, tally, year)
        elif kind == "hl7v2":
            out = hl7v2.deidentify(data, policy.hl7, key, tally)
        else:
            out = csvfile.deidentify(data, policy.csv, key, tally)
    except DeidRefused:
        raise
    except RecursionError:
        raise DeidRefused(f"{kind}: the file nests too deeply to de-identify; the file was not "
                          "shared") from None
    except Exception as e:  # a library's error may quote the file: only its type is reported
        raise DeidRefused(f"{kind}: de-identification failed ({type(e).__name__}); the file was "
                          f"not shared: check that it opens in a {kind} reader, then try again"
                          ) from None
    return tally.result(out, kind)
