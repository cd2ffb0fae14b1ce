"""Consent requests (paper Fig. 5; docs/FORMAT.md section 6.8): the signed file a recipient
sends to ask a patient's device for records. Pure: make, parse, verify; no state.

A request file is UTF-8 JSON {"dispersiond_request": 1, "body": B, "sig": S}: B is the
base64url of the canonical JSON body, S the base64url Ed25519 signature of
LABEL || body by the recipient's request key (derived from their identity, identity.py).
The body names the requester, their keys, which records (ids, or kind + date range), the
purpose, the date the request lapses and a random nonce. Every field is bounded; any
file that is not exactly this is refused with one line saying what is wrong.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..identity import (Identity, IdentityError, decode_public, decode_signing_public,
                        fingerprint)
from .errors import ShareError

FORMAT_VERSION = 1
LABEL = b"dispersiond consent request v1\x00"
MAX_FILE = 64 << 10
MAX_IDS = 1000
MAX_PURPOSE = 1000
SUFFIX = ".dsprequest"
KINDS = ("dicom", "fhir", "hl7v2", "csv")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_BODY_KEYS = {"v", "requester", "public_key", "request_key", "records", "purpose",
              "valid_until", "nonce", "created"}


class RequestInvalid(ShareError):
    """Not a well-formed, correctly signed consent request."""


@dataclass(frozen=True)
class Request:
    """A parsed request whose signature verified under the key it names."""

    body: dict
    raw_body: bytes
    signer: bytes  # Ed25519 public key

    @property
    def id(self) -> str:
        import hashlib

        return hashlib.sha256(LABEL + self.raw_body).hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signer)

    @property
    def scope(self) -> dict:
        return self.body["records"]

    def describe_scope(self) -> str:
        s = self.scope
        if "ids" in s:
            return f"{len(s['ids'])} record(s) by id"
        parts = [s.get("kind") or "any kind"]
        if s.get("since") or s.get("until"):
            parts.append(f"dated {s.get('since') or '...'} to {s.get('until') or '...'}")
        return ", ".join(parts)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _date(x) -> bool:
    if not isinstance(x, str) or not re.fullmatch(r"\d{4}-\d\d-\d\d", x):
        return False
    try:
        dt.date.fromisoformat(x)
    except ValueError:
        return False
    return True


def _line(x, limit: int) -> bool:
    return isinstance(x, str) and 0 < len(x) <= limit and not any(
        ord(c) < 32 or ord(c) == 127 for c in x)


def make(identity: Identity, requester: str, records: dict, purpose: str,
         valid_until: str, *, now: int | None = None, nonce: str | None = None) -> bytes:
    """A signed request file's bytes (checked by the same rules the device applies)."""
    import time

    body = {"v": FORMAT_VERSION, "requester": requester, "public_key": identity.public,
            "request_key": identity.request_key, "records": records, "purpose": purpose,
            "valid_until": valid_until, "nonce": nonce or os.urandom(16).hex(),
            "created": int(time.time()) if now is None else now}
    check_body(body)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = identity.signing_key.sign(LABEL + raw)
    return (json.dumps({"dispersiond_request": FORMAT_VERSION, "body": _b64(raw),
                        "sig": _b64(sig)}, sort_keys=True) + "\n").encode()


def check_body(b) -> dict:
    """The body's shape; RequestInvalid naming the field otherwise."""
    def bad(what: str) -> RequestInvalid:
        return RequestInvalid(f"consent request refused: {what}")

    if not isinstance(b, dict) or b.get("v") != FORMAT_VERSION:
        raise bad(f"not a version {FORMAT_VERSION} request body")
    if set(b) != _BODY_KEYS:
        raise bad("unexpected or missing fields in the body")
    if not (isinstance(b["requester"], str) and _NAME.fullmatch(b["requester"])):
        raise bad("requester must be 1-64 letters, digits or ._@+-")
    try:
        decode_public(b["public_key"], "the request's public_key")
        decode_signing_public(b["request_key"], "the request's request_key")
    except IdentityError as exc:
        raise bad(str(exc)) from None
    r = b["records"]
    if not isinstance(r, dict):
        raise bad("records must be an object")
    if "ids" in r:
        ids = r["ids"]
        if set(r) != {"ids"} or not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS \
                or not all(isinstance(i, str) and _HEX32.fullmatch(i) for i in ids) \
                or len(set(ids)) != len(ids):
            raise bad(f"records.ids must be 1-{MAX_IDS} distinct 32-hex-digit record ids")
    else:
        if not set(r) <= {"kind", "since", "until"}:
            raise bad("records takes ids, or kind/since/until")
        if r.get("kind") is not None and r["kind"] not in KINDS:
            raise bad(f"records.kind must be one of {', '.join(KINDS)}")
        for k in ("since", "until"):
            if r.get(k) is not None and not _date(r[k]):
                raise bad(f"records.{k} must be a date like 2026-03-14")
        if r.get("since") and r.get("until") and r["since"] > r["until"]:
            raise bad("records.since is after records.until")
    if not _line(b["purpose"], MAX_PURPOSE):
        raise bad(f"purpose must be one line of 1-{MAX_PURPOSE} characters")
    if not _date(b["valid_until"]):
        raise bad("valid_until must be a date like 2026-12-31")
    if not (isinstance(b["nonce"], str) and _HEX32.fullmatch(b["nonce"])):
        raise bad("nonce must be 32 hex digits")
    c = b["created"]
    if not (isinstance(c, int) and not isinstance(c, bool) and 0 < c < 1 << 40):
        raise bad("created must be unix seconds")
    return b


def parse(data: bytes) -> Request:
    """Parse and verify a request file; RequestInvalid for anything else, never another
    exception, whatever the bytes."""
    def bad(what: str) -> RequestInvalid:
        return RequestInvalid(f"consent request refused: {what}")

    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_FILE:
        raise bad(f"the file is larger than {MAX_FILE >> 10} KiB")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("not a dispersiond request file (not JSON)") from None
    if not isinstance(doc, dict) or set(doc) != {"dispersiond_request", "body", "sig"} \
            or doc["dispersiond_request"] != FORMAT_VERSION:
        raise bad(f"not a version {FORMAT_VERSION} dispersiond request file")
    if not isinstance(doc["body"], str) or not isinstance(doc["sig"], str):
        raise bad("body and sig must be base64url text")
    try:
        raw, sig = _unb64(doc["body"]), _unb64(doc["sig"])
    except (binascii.Error, ValueError):
        raise bad("body or sig is not valid base64url") from None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("the body is not JSON") from None
    check_body(body)
    signer = decode_signing_public(body["request_key"])
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(sig, LABEL + raw)
    except (InvalidSignature, ValueError):
        raise bad("its signature does not verify (altered, or not made by the key it "
                  "names)") from None
    return Request(body, raw, signer)

