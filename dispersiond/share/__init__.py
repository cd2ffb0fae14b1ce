"""Sharing one file with one recipient (paper section 4.2): share bundles.

The modules, by job: `errors`; `bundle` (the byte format: sealing to the recipient,
the sending device's signature); `payload` (the sealed JSON's schema and upgrades);
`device` (this device's signing key); `senders` (the devices a recipient trusts);
`issue` (making a bundle: the `share` command and standing grants); `grants`;
`links` (the HTTP client that reads a bundle's links); `opening` (the recipient's
side). What a recipient's role gets, and its pseudonym secret: `roles`. Records carried
inside a bundle (de-identified shares, study exports): `inline` (the format), `export`
(the device's side), `unpack` (the recipient's). Consent requests: `request_format`
(the signed file), `consent` (receive, list, approve, deny). Byte format:
docs/FORMAT.md section 6.
"""
from __future__ import annotations

from .bundle import (HEADER, HEADER_LEN, MAGIC, MAX_SEALED, SEAL_INFO, SUFFIX, SUITE, TAG,
                     UNSIGNED_VERSION, VERSION, Sealed, read, seal, seal_signed,
                     unseal)
from .errors import (BundleFormatError, BundleTampered, LinkExpired, ObjectGone,
                     ObjectMismatch, ObjectTampered, ObjectUnavailable, ShareError, ShareRefused,
                     SignatureInvalid, UnknownSender, UnsignedBundle, WrongIdentity)
from .grants import apply_grants
from .issue import DEFAULT_EXPIRES, ShareResult, bundle_name, create_bundle, lifetime
from .opening import Opened, open_bundle
from .payload import MAX_LIFETIME, PAYLOAD_VERSION, check_payload
from .senders import Sender

__all__ = [
    "HEADER", "HEADER_LEN", "MAGIC", "MAX_SEALED", "SEAL_INFO", "SUFFIX", "SUITE", "TAG",
    "UNSIGNED_VERSION", "VERSION", "Sealed", "read", "seal", "seal_signed", "unseal",
    "BundleFormatError", "BundleTampered", "LinkExpired", "ObjectGone", "ObjectMismatch",
    "ObjectTampered", "ObjectUnavailable", "ShareError", "ShareRefused", "SignatureInvalid",
    "UnknownSender", "UnsignedBundle", "WrongIdentity", "apply_grants", "DEFAULT_EXPIRES",
    "ShareResult", "bundle_name", "create_bundle", "lifetime", "Opened", "open_bundle",
    "MAX_LIFETIME", "PAYLOAD_VERSION", "check_payload", "Sender",
]
