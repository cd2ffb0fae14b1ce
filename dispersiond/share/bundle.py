"""The share bundle's byte format (docs/FORMAT.md section 6.2): header, sealing to the
recipient's X25519 key, and the sending device's Ed25519 signature.

Version 2 (written): the sealed plaintext is `spk || sig || payload`, where `sig` signs
the header, the recipient's key, `spk` and the payload together, so a bundle cannot be
re-addressed, re-signed or stripped of its signature without failing. Version 1 (read
only) had no signature: `read` returns it with `sender=None` and the caller decides.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..identity import Identity, fingerprint, recipient_id
from .device import DeviceKey
from .errors import BundleFormatError, BundleTampered, SignatureInvalid, WrongIdentity
from .payload import check_payload

MAGIC = b"DSPS"
VERSION = 2  # written: signed by the sending device
UNSIGNED_VERSION = 1  # still read, only when the recipient accepts unsigned bundles
SUITE = 1  # X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (+ Ed25519 from version 2)
HEADER = struct.Struct(">4sBBH8s32sI")  # magic version suite flags recipient_id epk sealed_len
HEADER_LEN = HEADER.size  # 52
TAG = 16
SPK_LEN, SIG_LEN = 32, 64
MAX_SEALED = 4 << 20
SUFFIX = ".dspshare"
SEAL_INFO = b"dispersiond share v1 seal"
SIGN_LABEL = b"dispersiond share v2 signature\x00"


@dataclass(frozen=True)
class Sealed:
    """The authenticated first part of a bundle."""

    version: int
    payload: dict
    sender: bytes | None  # Ed25519 public key of the signing device; None when unsigned

    @property
    def sender_fingerprint(self) -> str | None:
        return fingerprint(self.sender) if self.sender else None


def _seal_key(shared: bytes, epk: bytes, rpk: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + rpk,
                info=SEAL_INFO).derive(shared)


def _seal(version: int, plain_for: Callable[[bytes], bytes], plain_len: int, rpk: bytes,
          eph: X25519PrivateKey | None) -> bytes:
    """Header || AEAD(plain_for(header)): the plaintext may depend on the header (the
    signature covers it), so it is made once the header is known."""
    eph = eph or X25519PrivateKey.generate()
    epk = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(rpk))
    header = HEADER.pack(MAGIC, version, SUITE, 0, recipient_id(rpk), epk, plain_len + TAG)
    aead = ChaCha20Poly1305(_seal_key(shared, epk, rpk))
    return header + aead.encrypt(bytes(12), plain_for(header), header)


def seal(payload: bytes, rpk: bytes, eph: X25519PrivateKey | None = None) -> bytes:
    """A version 1 (unsigned) sealed part: kept for the vectors and for tests of old bundles."""
    return _seal(UNSIGNED_VERSION, lambda _h: payload, len(payload), rpk, eph)


def signed_message(header: bytes, rpk: bytes, spk: bytes, payload: bytes) -> bytes:
    """What the device signs: everything the recipient relies on (FORMAT.md 6.2)."""
    return SIGN_LABEL + header + rpk + spk + payload


def seal_signed(payload: bytes, rpk: bytes, device: DeviceKey,
                eph: X25519PrivateKey | None = None) -> bytes:
    """Header || sealed(spk || sig || payload): a version 2 sealed part."""
    spk = device.public_bytes

    def plain(header: bytes) -> bytes:
        return spk + device.sign(signed_message(header, rpk, spk, payload)) + payload

    return _seal(VERSION, plain, SPK_LEN + SIG_LEN + len(payload), rpk, eph)


def read(f: BinaryIO, identity: Identity) -> Sealed:
    """Read, open and check the sealed part of a bundle from `f` (left just after it)."""
    head = f.read(HEADER_LEN)
    if len(head) < 4 or head[:4] != MAGIC:
        raise BundleFormatError("not a dispersiond share bundle (bad magic)")
    if len(head) < HEADER_LEN:
        raise BundleTampered(f"the bundle is truncated ({len(head)} bytes)")
    _, version, suite, flags, rid, epk, sealed_len = HEADER.unpack(head)
    if version not in (VERSION, UNSIGNED_VERSION) or suite != SUITE:
        raise BundleFormatError(f"share bundle version {version} suite {suite} is not read by "
                                f"this build (it reads versions {UNSIGNED_VERSION}-{VERSION} "
                                f"suite {SUITE}); upgrade dispersiond, or the bundle is damaged")
    rpk = identity.public_bytes
    if rid != recipient_id(rpk):
        raise WrongIdentity(f"this bundle is sealed to another recipient (key fingerprint "
                            f"{rid.hex()}; your identity's is {recipient_id(rpk).hex()}): "
                            "open it with the identity it was made for (or it was altered)")
    extra = SPK_LEN + SIG_LEN if version == VERSION else 0
    if not TAG + extra <= sealed_len <= MAX_SEALED:
        raise BundleTampered("the bundle header is damaged (impossible sealed length)")
    sealed = f.read(sealed_len)
    if len(sealed) != sealed_len:
        raise BundleTampered(f"the bundle is truncated ({HEADER_LEN + len(sealed)} bytes)")
    try:
        shared = identity.secret.exchange(X25519PublicKey.from_public_bytes(epk))
        plain = ChaCha20Poly1305(_seal_key(shared, epk, rpk)).decrypt(bytes(12), sealed, head)
    except (InvalidTag, ValueError):
        raise BundleTampered("the bundle failed authentication: it was altered or damaged "
                             "after it was made") from None
    if flags:
        raise BundleFormatError(f"share bundle flags {flags:#x} are not understood by this "
                                "build; upgrade dispersiond")
    sender = None
    if version == VERSION:
        sender, sig, plain = plain[:SPK_LEN], plain[SPK_LEN:extra], plain[extra:]
        try:
            Ed25519PublicKey.from_public_bytes(sender).verify(
                sig, signed_message(head, rpk, sender, plain))
        except (InvalidSignature, ValueError):
            raise SignatureInvalid(f"the bundle's signature does not verify under the sender key "
                                   f"it names (fingerprint {fingerprint(sender)}): it was "
                                   "forged, re-addressed or re-signed; do not use it") from None
    try:
        doc = json.loads(plain)
    except (ValueError, RecursionError):
        raise BundleFormatError("the bundle's sealed part is not valid JSON") from None
    return Sealed(version, check_payload(doc), sender)


def unseal(f: BinaryIO, identity: Identity) -> dict:
    """The checked payload of a bundle (any version), without a sender policy."""
    return read(f, identity).payload
