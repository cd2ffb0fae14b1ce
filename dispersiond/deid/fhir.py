"""FHIR R4 JSON (single resources and Bundles): HIPAA Safe Harbor, 45 CFR 164.514(b)(2).

json is the library: the rules follow FHIR's data types (HumanName, ContactPoint, Address,
Identifier, Attachment, Narrative, Reference) wherever they appear, including extensions'
value[x], so a resource type this module has never seen is treated the same way.
- names, telecom, photos, narrative (text.div), notes and comments: removed;
- addresses: generalised to state and country, a US ZIP code to its first three digits
  (000 for the three-digit areas of 20,000 people or fewer);
- dates: to the year; instants (which cannot hold a year alone) removed; a birth date that
  makes the patient older than 89 removed (Safe Harbor's "90 or older");
- identifiers: replaced by keyed pseudonyms; resource ids and references rewritten with the
  same keys, so references inside a Bundle still resolve (server bases are dropped: a base
  URL names the institution);
- attachments: their data and URL removed, with a warning.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import pseudonym as ps
from . import safeharbor
from .outcome import DeidRefused, Tally
from .policy import FhirPolicy

PSEUDONYM_SYSTEM = "urn:dispersiond:deid:pseudonym"
NEUTRAL_BASE = "http://deid.invalid/fhir/"  # .invalid is reserved (RFC 2606): resolves nowhere
_DATE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])"
                   r"(-(0[1-9]|[12]\d|3[01])(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?$")
_REL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
_ABS_REF = re.compile(r"^https?://.+?/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})"
                      r"(/_history/[A-Za-z0-9\-.]{1,64})?$")
# R4 elements of type instant: a year alone is not a valid instant, so they are removed.
_INSTANT_KEYS = frozenset({"lastUpdated", "timestamp", "issued", "recorded", "when"})
_REMOVE_KEYS = {"telecom": "telecom_removed", "valueContactPoint": "telecom_removed",
                "photo": "photo_removed", "note": "note_removed", "comment": "note_removed",
                "valueHumanName": "name_removed"}
_ADDRESS_KEYS = frozenset({"address", "valueAddress"})
_IDENTIFIER_KEYS = frozenset({"identifier", "valueIdentifier"})
_ADDRESS_KEEP = ("use", "type")
_CONDITIONS = frozenset({"ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince", "etag",
                         "lastModified"})


@dataclass
class _Ctx:
    secret: bytes
    policy: FhirPolicy
    tally: Tally
    year: int


def deidentify(data: bytes, policy: FhirPolicy, secret: bytes, tally: Tally, year: int) -> bytes:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DeidRefused(f"FHIR: not valid UTF-8 JSON ({type(e).__name__}); export the resource "
                          "as FHIR JSON and share it again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise DeidRefused("FHIR: the JSON has no resourceType, so it is not a FHIR resource; "
                          "export it as a FHIR R4 resource or Bundle")
    ctx = _Ctx(secret, policy, tally, year)
    out = _resource(doc, ctx, contained=False)
    return json.dumps(out, ensure_ascii=False, indent=1).encode("utf-8")


def _resource(res: dict, ctx: _Ctx, contained: bool) -> dict:
    rtype = res.get("resourceType")
    out: dict[str, Any] = {}
    for key, value in res.items():
        if key == "id" and isinstance(value, str) and not contained:
            out[key] = new_id(ctx.secret, f"{rtype}/{value}")
            ctx.tally.add("id_rewritten")
        elif key == "meta":
            kept = {k: v for k, v in value.items() if k == "profile"} \
                if isinstance(value, dict) else {}
            if kept:
                out[key] = kept
            ctx.tally.add("meta_cleaned")
        elif key == "contained" and isinstance(value, list):
            out[key] = [_resource(r, ctx, contained=True) if isinstance(r, dict) else r
                        for r in value]
        elif key == "entry" and rtype == "Bundle" and isinstance(value, list):
            out[key] = [_entry(e, ctx) if isinstance(e, dict) else e for e in value]
        elif key == "birthDate" and isinstance(value, str):
            year = _year(value)
            if year is not None and ctx.year - int(year) > 89:
                ctx.tally.add("age_over_89_removed")
            elif year is not None:
                out[key] = year
                ctx.tally.add("date_generalised")
            else:
                ctx.tally.add("date_removed")
        elif key == "link" and rtype == "Bundle":  # paging links: server URLs and search terms
            ctx.tally.add("link_removed")
        elif key == "date" and rtype == "DocumentReference":  # an instant in R4
            ctx.tally.add("date_removed")
        else:
            _put(out, key, _field(key, value, ctx), ctx)
    return out


def _entry(entry: dict, ctx: _Ctx) -> dict:
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "fullUrl" and isinstance(value, str):
            out[key] = _full_url(value, ctx)
        elif key == "resource" and isinstance(value, dict):
            out[key] = _resource(value, ctx, contained=False)
        elif key in ("request", "response") and isinstance(value, dict):
            out[key] = _request(value, ctx)
        else:
            _put(out, key, _field(key, value, ctx), ctx)
    return out


def _request(req: dict, ctx: _Ctx) -> dict:
    out: dict[str, Any] = {}
    for key, value in req.items():
        if key in ("url", "location") and isinstance(value, str):
            ref = _reference(value, ctx)
            # a search URL (conditional create/update) may carry an identifier: keep its type only
            out[key] = ref if ref is not None else value.split("?", 1)[0].split("/", 1)[0]
        elif key in _CONDITIONS:
            ctx.tally.add("request_condition_removed")
        else:
            _put(out, key, _field(key, value, ctx), ctx)
    return out


def _put(out: dict, key: str, value: Any, ctx: _Ctx) -> None:
    """FHIR forbids empty objects and arrays: an element emptied by the rules is dropped."""
    if value is _DROP or value in ({}, []):
        return
    out[key] = value


_DROP = object()


def _field(key: str, value: Any, ctx: _Ctx) -> Any:
    if key in _REMOVE_KEYS:
        ctx.tally.add(_REMOVE_KEYS[key])
        return _DROP
    if key == "name" and _is_human_name(value):
        ctx.tally.add("name_removed")
        return _DROP
    if key == "text" and isinstance(value, dict) and "div" in value:
        ctx.tally.add("narrative_removed")
        return _DROP
    if key in _ADDRESS_KEYS:
        return _each(value, lambda a: _address(a, ctx))
    if key in _IDENTIFIER_KEYS:
        return _each(value, lambda i: _identifier(i, ctx))
    if key in _INSTANT_KEYS and isinstance(value, str):
        ctx.tally.add("date_removed")
        return _DROP
    if isinstance(value, dict):
        return _object(value, ctx)
    if isinstance(value, list):
        items = [_field(key, v, ctx) for v in value]
        return [v for v in items if v is not _DROP and v not in ({}, [])]
    if isinstance(value, str):
        year = _year(value)
        if year is not None:
            ctx.tally.add("date_generalised")
            return year
    return value


def _object(obj: dict, ctx: _Ctx) -> dict:
    if isinstance(obj.get("resourceType"), str):
        return _resource(obj, ctx, contained=False)
    if "contentType" in obj or "data" in obj:
        return _attachment(obj, ctx)
    out: dict[str, Any] = {}
    is_reference = "reference" in obj
    for key, value in obj.items():
        if key == "reference" and isinstance(value, str):
            ref = _reference(value, ctx)
            if ref is None:
                ctx.tally.add("reference_removed")
            else:
                out[key] = ref
                ctx.tally.add("reference_rewritten")
        elif key == "display" and (is_reference or "identifier" in obj):
            ctx.tally.add("display_removed")  # a Reference's display is often the person's name
        else:
            _put(out, key, _field(key, value, ctx), ctx)
    return out


def _each(value: Any, fn) -> Any:
    if isinstance(value, list):
        items = [fn(v) if isinstance(v, dict) else _DROP for v in value]
        return [v for v in items if v is not _DROP and v not in ({}, [])]
    return fn(value) if isinstance(value, dict) else _DROP


def _is_human_name(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(v, dict) and ({"family", "given", "text", "prefix", "suffix"} & v.keys())
               for v in items)


def _address(addr: dict, ctx: _Ctx) -> Any:
    out: dict[str, Any] = {k: addr[k] for k in _ADDRESS_KEEP if isinstance(addr.get(k), str)}
    if ctx.policy.keep_state and isinstance(addr.get("state"), str):
        out["state"] = addr["state"]
    if isinstance(addr.get("country"), str):
        out["country"] = addr["country"]
    zip3 = safeharbor.zip3(addr.get("postalCode"), addr.get("country")) if ctx.policy.zip3 else None
    if zip3 is not None:
        out["postalCode"] = zip3
    ctx.tally.add("address_generalised")
    return out if set(out) - set(_ADDRESS_KEEP) else _DROP


def _identifier(ident: dict, ctx: _Ctx) -> Any:
    value = ident.get("value")
    if not isinstance(value, str) or not value:
        ctx.tally.add("identifier_removed")
        return _DROP
    ctx.tally.add("identifier_pseudonymised")
    return {"system": PSEUDONYM_SYSTEM, "value": ps.pseudonym(ctx.secret, value.strip(), 16)}


def _attachment(att: dict, ctx: _Ctx) -> Any:
    ctx.tally.add("attachment_removed")
    ctx.tally.warn("attachment content removed (it may show the patient or carry free text)")
    out = {k: att[k] for k in ("contentType", "language") if isinstance(att.get(k), str)}
    return out or _DROP


def _year(value: str) -> str | None:
    m = _DATE.match(value)
    return m.group(1) if m else None


def new_id(secret: bytes, rtype_and_id: str) -> str:
    """The keyed id a resource gets (a valid FHIR id: base32, 16 characters)."""
    return ps.pseudonym(secret, rtype_and_id, 16, domain="fhir-id")


def _reference(ref: str, ctx: _Ctx) -> str | None:
    if ref.startswith("#"):
        return ref  # a contained resource: local, keeps its id
    if ref.startswith(("urn:uuid:", "urn:oid:")):
        return ps.uuid_urn(ctx.secret, ref)
    m = _REL_REF.match(ref) or _ABS_REF.match(ref)
    if m is None:
        return None
    return f"{m.group(1)}/{new_id(ctx.secret, f'{m.group(1)}/{m.group(2)}')}"


def _full_url(url: str, ctx: _Ctx) -> str:
    """Bundle fullUrls map like references (urn:uuid -> keyed urn:uuid; a server URL -> the
    neutral base + Type/new-id), so a relative reference still resolves against it."""
    if url.startswith(("urn:uuid:", "urn:oid:")):
        return ps.uuid_urn(ctx.secret, url)
    m = _ABS_REF.match(url)
    if m is not None:
        return NEUTRAL_BASE + f"{m.group(1)}/{new_id(ctx.secret, f'{m.group(1)}/{m.group(2)}')}"
    return ps.uuid_urn(ctx.secret, url)
