"""HL7 v2 messages (pipe-delimited ER7), parsed with the `hl7` library.

Rules are per segment and field (DEFAULT_FIELDS, overridable in the policy): identifiers
become keyed pseudonyms, the patient's name becomes the patient's pseudonym, dates keep the
year (a valid DTM precision), addresses keep state, country and a US ZIP3, people's names,
phone numbers and locations are cleared. Segments that exist to carry identity or free text
(next of kin, notes, insurance, guarantor) are dropped whole, and so is any segment with no
rules: a site's Z segment may hold anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import hl7

from . import pseudonym as ps
from . import safeharbor
from .outcome import DeidRefused, Tally
from .policy import Hl7Policy

_R, _P, _PAT, _Y, _A = "remove", "pseudonym", "patient", "year", "address"
DEFAULT_FIELDS: dict[str, dict[int, str]] = {
    "MSH": {7: _Y, 10: _P},
    "EVN": {2: _Y, 5: _R, 6: _Y},
    "PID": {2: _P, 3: _P, 4: _P, 5: _PAT, 6: _R, 7: _Y, 9: _R, 11: _A, 12: _R, 13: _R, 14: _R,
            18: _P, 19: _R, 20: _R, 21: _R, 23: _R, 29: _Y, 33: _Y, 34: _R},
    "PV1": {3: _R, 6: _R, 7: _R, 8: _R, 9: _R, 11: _R, 17: _R, 19: _P, 42: _R, 43: _R, 44: _Y,
            45: _Y, 50: _P, 52: _R},
    "ORC": {2: _P, 3: _P, 4: _P, 7: _R, 9: _Y, 10: _R, 11: _R, 12: _R, 13: _R, 14: _R, 15: _Y,
            19: _R, 21: _R, 22: _R, 23: _R, 24: _R},
    "OBR": {2: _P, 3: _P, 6: _Y, 7: _Y, 8: _Y, 10: _R, 14: _Y, 16: _R, 17: _R, 18: _R, 19: _R,
            20: _R, 21: _R, 22: _Y, 28: _R, 32: _R, 33: _R, 34: _R, 35: _R, 36: _Y},
    "OBX": {12: _Y, 14: _Y, 15: _R, 16: _R, 19: _Y, 23: _R, 24: _R, 25: _R},
    "SPM": {2: _P, 3: _P, 17: _Y, 18: _Y},
}
_COUNTED = {"remove": "removed", "pseudonym": "pseudonymised", "patient": "pseudonymised",
            "year": "date_generalised", "address": "address_generalised"}
_FREE_TEXT_TYPES = frozenset({"TX", "FT", "ST"})
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass
class _Ctx:
    secret: bytes
    tally: Tally
    rules: dict[str, dict[int, str]]
    policy: Hl7Policy
    patient: str


def rules(policy: Hl7Policy) -> dict[str, dict[int, str]]:
    """The defaults with the policy's field rules laid over them."""
    merged = {seg: dict(fields) for seg, fields in DEFAULT_FIELDS.items()}
    for seg, fields in policy.fields.items():
        merged.setdefault(seg, {}).update(fields)
    return merged


def deidentify(data: bytes, policy: Hl7Policy, secret: bytes, tally: Tally) -> bytes:
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "latin-1"
    text = text.lstrip("\ufeff \t\r\n").replace("\r\n", "\r").replace("\n", "\r")
    messages = _split(text)
    out = [_message(m, policy, secret, tally) for m in messages]
    return ("\r".join(out) + "\r").encode(encoding)


def _split(text: str) -> list[str]:
    lines = [ln for ln in text.split("\r") if ln.strip()]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise DeidRefused("HL7: the message does not start with an MSH segment; export it as an "
                          "HL7 v2 (ER7) message and share it again")
    messages: list[list[str]] = []
    for ln in lines:
        if ln.startswith("MSH"):
            messages.append([])
        messages[-1].append(ln)
    return ["\r".join(m) for m in messages]


def _message(text: str, policy: Hl7Policy, secret: bytes, tally: Tally) -> str:
    try:
        msg = hl7.parse(text)
    except (hl7.ParseException, ValueError, IndexError) as e:
        raise DeidRefused(f"HL7: the message could not be parsed ({type(e).__name__}); check its "
                          "MSH segment and separators") from None
    table = rules(policy)
    ctx = _Ctx(secret, tally, table, policy, _patient_key(msg))
    kept = []
    for seg in msg:
        sid = str(seg[0]).strip()
        if not _SEGMENT_ID.match(sid):
            raise DeidRefused("HL7: a segment has no valid three-character id; the message is "
                              "malformed, fix it at the source")
        if sid in policy.drop_segments:
            tally.add("segment_dropped")
            continue
        if sid not in table:
            if policy.unknown_segments == "refuse":
                raise DeidRefused(f"HL7: segment {sid} has no de-identification rules and the "
                                  f"policy refuses unknown segments; add hl7.fields.{sid} rules "
                                  "or set hl7.unknown_segments: drop")
            tally.add("segment_dropped")
            tally.warn(f"HL7: segment {sid} has no rules and was dropped")
            continue
        _segment(msg, seg, sid, ctx)
        kept.append(str(seg))
    return "\r".join(kept)


def _patient_key(msg: hl7.Message) -> str:
    """The first PID-3 identifier: what the patient's pseudonym is keyed on."""
    try:
        pid = msg.segment("PID")
    except KeyError:
        return ""
    return _first(msg, pid, 3) if len(pid) > 3 else ""


def _first(msg: hl7.Message, seg, n: int) -> str:
    """The first component of the first repetition of field n, as written."""
    text = str(seg[n])
    for sep in msg.separators[2:5]:
        text = text.split(sep, 1)[0]
    return text.strip()


def _segment(msg: hl7.Message, seg, sid: str, ctx: _Ctx) -> None:
    fields = ctx.rules[sid]
    if sid == "OBX" and fields.get(5) != "keep" and len(seg) > 5 \
            and str(seg[2]).strip().upper() in _FREE_TEXT_TYPES and str(seg[5]):
        seg[5] = ""
        ctx.tally.add("free_text_removed")
    for n, action in sorted(fields.items()):
        if n >= len(seg) or action == "keep" or not str(seg[n]):
            continue
        if sid == "MSH" and n < 3:
            continue  # the separators themselves
        new = _apply(msg, seg, n, action, ctx)
        seg[n] = new
        ctx.tally.add(_COUNTED[action])


def _apply(msg: hl7.Message, seg, n: int, action: str, ctx: _Ctx) -> str:
    if action == "remove":
        return ""
    if action == "patient":
        return ps.pseudonym(ctx.secret, ctx.patient, 16) if ctx.patient else ""
    if action == "pseudonym":
        value = _first(msg, seg, n)
        return ps.pseudonym(ctx.secret, value, 16) if value else ""
    if action == "year":
        value = _first(msg, seg, n)
        return value[:4] if len(value) >= 4 and value[:4].isdigit() else ""
    return _address(msg, str(seg[n]))


def _address(msg: hl7.Message, text: str) -> str:
    """XAD keeps state (4), a US ZIP3 (5) and country (6); the first repetition only."""
    rep, comp = msg.separators[2], msg.separators[3]  # separators: segment, field, rep, comp, sub
    parts = text.split(rep, 1)[0].split(comp)
    state = parts[3] if len(parts) > 3 else ""
    country = parts[5] if len(parts) > 5 else ""
    zip_code = parts[4] if len(parts) > 4 else ""
    out = ["", "", "", state, safeharbor.zip3(zip_code, country) or "", country]
    while out and not out[-1]:
        out.pop()
    return comp.join(out)
