"""The device's signing identity: the Ed25519 key that says which device made a bundle.

A random 32-byte seed, kept in the state directory as `sender.key`, sealed under the
master key (docs/FORMAT.md section 6.7). It is created by `init`, or on first use by a
state directory made before it existed; `rotate-key` re-wraps it and every manifest
backup carries the seed, so `recover` on a blank device gives the same identity back
and recipients never need to pin the device again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..codec import se2
from ..errors import DispersiondError
from ..fsutil import atomic_output
from ..identity import encode_signing_public, fingerprint
from ..keys import subkey

FILE_NAME = "sender.key"
MAGIC = b"DSPD"
VERSION = 1
HEADER_LEN = 4 + 1 + 8  # magic version key_id; the AES-GCM associated data
SEED_LEN = 32
BLOB_LEN = HEADER_LEN + 12 + SEED_LEN + 16


class DeviceKeyError(DispersiondError):
    """The device's signing key cannot be read."""


@dataclass(frozen=True)
class DeviceKey:
    """A device's Ed25519 signing key."""

    secret: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: bytes) -> "DeviceKey":
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls) -> "DeviceKey":
        return cls.from_seed(os.urandom(SEED_LEN))

    @property
    def seed(self) -> bytes:
        return self.secret.private_bytes_raw()

    @property
    def public_bytes(self) -> bytes:
        return self.secret.public_key().public_bytes_raw()

    @property
    def public(self) -> str:
        return encode_signing_public(self.public_bytes)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        return self.secret.sign(message)


def seal_seed(master_key: bytes, seed: bytes) -> bytes:
    header = MAGIC + bytes([VERSION]) + se2.key_id(master_key)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(subkey(master_key, "device identity")).encrypt(nonce, seed,
                                                                                   header)


def open_seed(master_key: bytes, blob: bytes, where: Path | str) -> bytes:
    if len(blob) != BLOB_LEN or blob[:4] != MAGIC or blob[4] != VERSION:
        raise DeviceKeyError(f"{where} is not a dispersiond device key (damaged?): restore it "
                             "from a backup, or run 'dispersiond recover' on a blank state")
    if blob[5:13] != se2.key_id(master_key):
        raise DeviceKeyError(f"{where} is sealed under master key {blob[5:13].hex()}, not the "
                             f"configured one ({se2.key_id(master_key).hex()}): finish an "
                             "interrupted 'dispersiond rotate-key' by running it again")
    try:
        return AESGCM(subkey(master_key, "device identity")).decrypt(
            blob[13:25], blob[25:], blob[:HEADER_LEN])
    except InvalidTag:
        raise DeviceKeyError(f"{where} failed authentication (altered or damaged)") from None


def key_path(state_root: Path) -> Path:
    return Path(state_root) / FILE_NAME


def load(state_root: Path, master_key: bytes) -> DeviceKey | None:
    """The device key, or None if this state directory has none yet."""
    path = key_path(state_root)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    return DeviceKey.from_seed(open_seed(master_key, blob, path))


def install(state_root: Path, master_key: bytes, seed: bytes, *, replace: bool) -> None:
    """Write the sealed seed (mode 0600); without `replace`, never over an existing key."""
    path = key_path(state_root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_output(path, overwrite=replace, mode=0o600) as f:
        f.write(seal_seed(master_key, seed))


def load_or_create(state_root: Path, master_key: bytes) -> DeviceKey:
    """The device key, made now if the state directory has none (race-safe: the first
    writer wins and everyone reads its key)."""
    got = load(state_root, master_key)
    if got is not None:
        return got
    try:
        install(state_root, master_key, DeviceKey.generate().seed, replace=False)
    except FileExistsError:
        pass
    got = load(state_root, master_key)
    assert got is not None
    return got


def rewrap(state_root: Path, old_key: bytes, new_key: bytes) -> bool:
    """Re-seal the device key under a new master key; idempotent, so an interrupted
    rotation that runs again finds it already done. Returns whether it was rewritten."""
    path = key_path(state_root)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return False
    if blob[5:13] == se2.key_id(new_key):
        return False
    install(state_root, new_key, open_seed(old_key, blob, path), replace=True)
    return True


def seed_for_backup(state_root: Path, master_key: bytes) -> bytes | None:
    """The seed for the manifest backup (made now if missing). A damaged key file must
    not stop backups of everything else: it is logged and left out."""
    from ..logs import log

    try:
        return load_or_create(state_root, master_key).seed
    except (DeviceKeyError, OSError) as exc:
        log.warning("the manifest backup goes without the device's signing key: %s", exc)
        return None


def restore_from_backup(state_root: Path, master_key: bytes, doc: dict) -> bool:
    """On recover: the signing key the backup carries replaces any made on this blank
    device in the meantime, so recipients' pins keep matching. Returns whether it did."""
    seed = doc.get("sender_key")
    if not isinstance(seed, str) or len(seed) != 2 * SEED_LEN:
        return False
    install(state_root, master_key, bytes.fromhex(seed), replace=True)
    return True
