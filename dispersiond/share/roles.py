"""What a recipient's role gets, and the keys a de-identified share is made under.

The per-recipient pseudonym secret derives from the device's signing key seed (which
survives `rotate-key` and travels in manifest backups, so `recover` gives it back) and
the recipient's X25519 public key: the same patient gets the same pseudonym in every
share to one recipient, and unlinkable ones across recipients or a re-enrolled key.
"""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import Recipient
from ..deid import recipient_secret
from ..identity import IdentityError, decode_public, decode_signing_public
from .device import DeviceKey
from .errors import ShareRefused

_ROOT_INFO = b"dispersiond deid pseudonym root v1"
MAX_REASON = 500


def recipient_key(rcpt: Recipient) -> bytes:
    """The recipient's X25519 public key; ShareRefused naming the config entry otherwise."""
    try:
        return decode_public(rcpt.public_key, f"recipients[{rcpt.name}].public_key")
    except IdentityError as exc:
        raise ShareRefused(f"share refused: {exc}") from None


def request_key(rcpt: Recipient) -> bytes | None:
    """The recipient's request signing key, or None when the entry gives none (or a bad one)."""
    if not rcpt.request_key:
        return None
    try:
        return decode_signing_public(rcpt.request_key, f"recipients[{rcpt.name}].request_key")
    except IdentityError:
        return None


def pseudonym_secret(device: DeviceKey, rcpt: Recipient) -> bytes:
    """The secret every pseudonym, replacement UID and date shift for `rcpt` is keyed by."""
    root = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_ROOT_INFO).derive(device.seed)
    return recipient_secret(root, recipient_key(rcpt), rcpt.name)


def check_override(rcpt: Recipient, identified: bool, reason: str | None) -> str | None:
    """The audited reason for an identified share to a non-doctor; None when not one.

    Refuses an override without a reason: handing an institute a named record is the
    exception the patient must be able to account for later."""
    if not identified or rcpt.identified:
        return None
    text = (reason or "").strip()
    if not text:
        raise ShareRefused(f"share refused: {rcpt.name} is a{'n' if rcpt.role[0] in 'aeio' else ''} "
                           f"{rcpt.role} and gets de-identified records; an identified share "
                           "needs --reason TEXT saying why (it goes to the audit log)")
    if len(text) > MAX_REASON or any(ord(c) < 32 for c in text):
        raise ShareRefused(f"share refused: --reason must be one line of at most {MAX_REASON} "
                           "characters")
    return text
