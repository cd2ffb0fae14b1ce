"""Keyed pseudonyms and date shifts under one recipient's secret.

Every derived value is an HMAC-SHA256 of the original under a secret that belongs to one
recipient: the same patient gets the same pseudonym in every file shared with that recipient
(a study can link its records), while two recipients' secrets differ, so their pseudonyms
cannot be joined. Without the secret the HMAC cannot be inverted or recomputed from a guessed
identifier, which a plain hash of a patient number would allow.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_LEN = 32
_INFO = b"dispersiond deid recipient secret v1"


def recipient_secret(device_key: bytes, recipient_public_key: str | bytes,
                     recipient_name: str) -> bytes:
    """Derive the per-recipient secret from the device key (HKDF-SHA256).

    Binding the recipient's public key as well as the name means a recipient re-enrolled
    under a new key pair starts a new, unlinkable pseudonym space.
    """
    if len(device_key) < 16:
        raise ValueError("device key too short for HKDF (need at least 16 bytes)")
    pub = recipient_public_key.encode() if isinstance(recipient_public_key, str) \
        else recipient_public_key
    info = _INFO + b"\x00" + _lp(recipient_name.encode()) + _lp(pub)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SECRET_LEN, salt=None, info=info)
    return hkdf.derive(device_key)


def _lp(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def digest(secret: bytes, domain: str, value: str) -> bytes:
    """HMAC-SHA256 of `value` in a named domain (ids, uids, dates never share an output)."""
    if len(secret) < 16:
        raise ValueError("pseudonym secret too short (need at least 16 bytes)")
    return hmac.new(secret, domain.encode() + b"\x00" + value.encode("utf-8", "surrogateescape"),
                    hashlib.sha256).digest()


def pseudonym(secret: bytes, value: str, length: int = 16, domain: str = "id") -> str:
    """An upper-case base32 pseudonym of `length` characters (A-Z, 2-7: valid in every
    DICOM string VR, HL7 field, FHIR id and CSV cell without escaping)."""
    text = base64.b32encode(digest(secret, domain, value)).decode().rstrip("=")
    return text[:max(4, min(length, len(text)))]


def _uuid8(secret: bytes, domain: str, original: str) -> uuid.UUID:
    raw = bytearray(digest(secret, domain, original)[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom (RFC 9562)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return uuid.UUID(bytes=bytes(raw))


def uid(secret: bytes, original: str) -> str:
    """A DICOM UID under the 2.25 root (PS3.5 B.2): a keyed UUID as one integer."""
    return "2.25." + str(_uuid8(secret, "uid", original).int)


def uuid_urn(secret: bytes, original: str) -> str:
    """A keyed urn:uuid (for FHIR Bundle fullUrls)."""
    return _uuid8(secret, "urn", original).urn


def date_shift_days(secret: bytes, patient: str, max_days: int) -> int:
    """Days to move one patient's dates back: 1..max_days, keyed per recipient and patient,
    so intervals inside one patient's record are kept while the calendar dates are not."""
    if max_days < 1:
        raise ValueError("max_days must be at least 1")
    return -(1 + int.from_bytes(digest(secret, "dateshift", patient)[:8], "big") % max_days)
