"""Recipient identities (X25519) and the text forms of sender keys (Ed25519).

A recipient (doctor, institute, authority) makes a key pair with `dispersiond keygen`.
The secret key stays in a file of theirs (mode 0600); the public key is a short
printable string the user pastes into the `recipients:` section of the config.

Text forms (docs/FORMAT.md section 6.1), each with a 4-byte checksum so that a typo is
caught when the string is read, not when a share fails to open:

  public key  "dspk1" + base32(pk || check)  lower case, no padding (63 characters)
  secret key  "DSPSK1" + base32(sk || check) upper case, no padding, in a file whose
              other lines are '#' comments
  or, with a passphrase,
              "DSPSKE1" + base32(salt || nonce || AES-256-GCM(Argon2id(passphrase,
              salt), nonce, sk, label)), so a copied file alone opens nothing

check = SHA-256(label || key)[0:4], label "dispersiond public key v1" or
"dispersiond secret key v1".

A sending device signs its bundles with an Ed25519 key (dispersiond/share/device.py);
its public half is printed as "dspsig1" + base32(pk || check), label "dispersiond
signing key v1", with a short fingerprint a doctor can read out over the phone.

A recipient signs its consent requests (docs/FORMAT.md section 6.8) with an Ed25519 key
derived from its X25519 secret (HKDF-SHA256, label "dispersiond request signing key v1"):
every identity file, old ones included, has one, and nothing new needs to be kept secret.
Its public half is printed in the same "dspsig1" form and goes into the sender's config
as the recipient's `request_key`.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DispersiondError
from .fsutil import atomic_output
from .keys import derive_key

PUBLIC_PREFIX = "dspk1"
SECRET_PREFIX = "DSPSK1"
SEALED_PREFIX = "DSPSKE1"
_PUB_LABEL = b"dispersiond public key v1"
_SEC_LABEL = b"dispersiond secret key v1"
_RID_LABEL = b"dispersiond share v1 recipient"
SIGNING_PREFIX = "dspsig1"
_SIG_LABEL = b"dispersiond signing key v1"
_FPR_LABEL = b"dispersiond sender fingerprint v1"
_REQ_SIGN_LABEL = b"dispersiond request signing key v1"


class IdentityError(DispersiondError):
    """A key string or identity file that cannot be used."""


def _check(label: bytes, key: bytes) -> bytes:
    return hashlib.sha256(label + key).digest()[:4]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


def encode_public(pk: bytes) -> str:
    return PUBLIC_PREFIX + _b32(pk + _check(_PUB_LABEL, pk)).lower()


def _decode_text(text: str, prefix: str, label: bytes, what: str, made_by: str) -> bytes:
    s = text.strip() if isinstance(text, str) else ""
    if "\0" in s or not s.lower().startswith(prefix):
        raise IdentityError(f"{what} must start with '{prefix}' (made by {made_by})")
    try:
        raw = _unb32(s[len(prefix):])
    except ValueError:
        raise IdentityError(f"{what} is not valid base32: check for a copy-paste mistake") from None
    if len(raw) != 36 or raw[32:] != _check(label, raw[:32]):
        raise IdentityError(f"{what} is damaged (wrong length or checksum): copy it again")
    return raw[:32]


def decode_public(text: str, what: str = "public key") -> bytes:
    """The 32 raw bytes of a 'dspk1...' string; IdentityError naming the problem otherwise.

    A low-order point (all zero, or one of the few small-order points) would make every
    share sealed to it readable by anyone: it is refused here, where the key is read."""
    pk = _decode_text(text, PUBLIC_PREFIX, _PUB_LABEL, what, "'dispersiond keygen'")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError:  # the shared secret is all zero for every secret key
        raise IdentityError(f"{what} is a low-order X25519 point, not a usable key: ask the "
                            "recipient for the key 'dispersiond keygen' printed") from None
    return pk


def encode_signing_public(pk: bytes) -> str:
    return SIGNING_PREFIX + _b32(pk + _check(_SIG_LABEL, pk)).lower()


def decode_signing_public(text: str, what: str = "sender key") -> bytes:
    """The 32 raw bytes of a 'dspsig1...' string (a device's Ed25519 public key)."""
    return _decode_text(text, SIGNING_PREFIX, _SIG_LABEL, what, "'dispersiond identity' on "
                        "the sending device")


def fingerprint(pk: bytes) -> str:
    """Short form of a sender key to compare by eye or over the phone: 4 groups of 4 hex."""
    h = hashlib.sha256(_FPR_LABEL + pk).hexdigest()[:16]
    return "-".join(h[i:i + 4] for i in range(0, 16, 4))


def recipient_id(pk: bytes) -> bytes:
    """8-byte fingerprint of a public key: lets open-share tell a wrong identity apart."""
    return hashlib.sha256(_RID_LABEL + pk).digest()[:8]


@dataclass(frozen=True)
class Identity:
    """A recipient's secret key and the public key that goes with it."""

    secret: X25519PrivateKey
    #: the file it was read from: the known-senders file sits next to it
    path: Path | None = None

    @property
    def public_bytes(self) -> bytes:
        return self.secret.public_key().public_bytes_raw()

    @property
    def public(self) -> str:
        return encode_public(self.public_bytes)

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key consent requests are signed with, derived from the secret."""
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=_REQ_SIGN_LABEL).derive(self.secret.private_bytes_raw())
        return Ed25519PrivateKey.from_private_bytes(seed)

    @property
    def request_key(self) -> str:
        """The signing key's public half ('dspsig1...'): the sender's `request_key`."""
        return encode_signing_public(self.signing_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> "Identity":
        return cls(X25519PrivateKey.generate())

    def secret_text(self, passphrase: bytes | None = None) -> str:
        sk = self.secret.private_bytes_raw()
        if passphrase is None:
            return SECRET_PREFIX + _b32(sk + _check(_SEC_LABEL, sk))
        salt, nonce = os.urandom(16), os.urandom(12)
        sealed = AESGCM(derive_key(passphrase, salt)).encrypt(nonce, sk, _SEC_LABEL)
        return SEALED_PREFIX + _b32(salt + nonce + sealed)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the identity file (mode 0600); never replaces an existing file. With a
        passphrase the secret key is sealed under a key derived from it (Argon2id)."""
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        keep = ("# Protected by a passphrase: the file and the passphrase together open "
                "every share sent to this key.\n" if passphrase is not None else
                "# Keep this file secret: whoever holds it opens every share sent to this key.\n")
        text = (f"# dispersiond identity (X25519), created {now}\n"
                f"# public key: {self.public}\n"
                f"# request key: {self.request_key}\n{keep}"
                f"{self.secret_text(passphrase)}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_output(path, overwrite=False, mode=0o600) as f:
                f.write(text.encode())
        except FileExistsError:
            raise IdentityError(f"{path} already exists; keygen never overwrites a key") from None


def load_identity(path: str | os.PathLike,
                  passphrase: bytes | Callable[[], bytes] | None = None) -> Identity:
    """Read an identity file written by `keygen`; actionable errors for anything else.

    A sealed file needs `passphrase` (or a callable giving it, called only then)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise IdentityError(f"cannot read identity file {path}: {reason}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not lines[0].upper().startswith((SECRET_PREFIX, SEALED_PREFIX)):
        if any(ln.lower().startswith(PUBLIC_PREFIX) for ln in lines):
            raise IdentityError(f"{path} holds a public key; open-share needs the secret "
                                "identity file that keygen wrote")
        raise IdentityError(f"{path} is not a dispersiond identity file (made by 'dispersiond "
                            "keygen')")
    sealed = lines[0].upper().startswith(SEALED_PREFIX)
    try:
        raw = _unb32(lines[0][len(SEALED_PREFIX if sealed else SECRET_PREFIX):])
    except ValueError:
        raw = b""
    if sealed:
        sk = _unseal(path, raw, passphrase)
    elif len(raw) != 36 or raw[32:] != _check(_SEC_LABEL, raw[:32]):
        raise IdentityError(f"identity file {path} is damaged (wrong length or checksum)")
    else:
        sk = raw[:32]
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        from .logs import log

        log.warning("identity file %s is readable by others (mode %o): chmod 600 it", path,
                    stat.S_IMODE(mode))
    return Identity(X25519PrivateKey.from_private_bytes(sk), path)


def _unseal(path: Path, raw: bytes, passphrase: bytes | Callable[[], bytes] | None) -> bytes:
    if callable(passphrase):
        passphrase = passphrase()
    if passphrase is None:
        raise IdentityError(f"identity file {path} is protected by a passphrase: give it "
                            "(DISPERSIOND_PASSPHRASE, or at the prompt)")
    if len(raw) != 16 + 12 + 32 + 16:
        raise IdentityError(f"identity file {path} is damaged (wrong length)")
    try:
        return AESGCM(derive_key(passphrase, raw[:16])).decrypt(raw[16:28], raw[28:], _SEC_LABEL)
    except InvalidTag:
        raise IdentityError(f"identity file {path}: wrong passphrase (or the file is "
                            "damaged)") from None

