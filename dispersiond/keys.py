"""Master key: loaded from a raw key file or derived from a passphrase (Argon2id).

The master key only wraps per-file secrets and manifest backups (docs/FORMAT.md),
so rotating it never touches a public fragment.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .codec import se2
from .errors import ConfigError
from .fsutil import atomic_output, read_key_file
from .logs import log

KEY_LEN = 32
# RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes (~0.2 s here).
ARGON2 = {"iterations": 3, "lanes": 4, "memory_cost": 64 * 1024}
SCRYPT = {"n": 2**17, "r": 8, "p": 1}


def derive_key(passphrase: bytes, salt: bytes, kdf: str = "argon2id") -> bytes:
    """A 32-byte master key from a passphrase; memory-hard so guessing costs."""
    if not passphrase:
        raise ConfigError("the passphrase is empty")
    if kdf == "argon2id":
        try:
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        except ImportError:  # cryptography < 44
            raise ConfigError("this cryptography build has no Argon2id: re-create the key "
                              "with kdf: scrypt, or upgrade cryptography") from None
        return Argon2id(salt=salt, length=KEY_LEN, **ARGON2).derive(passphrase)
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=KEY_LEN, **SCRYPT).derive(passphrase)


def load_master_key(cfg) -> bytes:
    """The configured master key, with an actionable error when it cannot be had."""
    k = cfg.key
    if k.file is not None:
        path = cfg.path(k.file)
        key = read_key_file(path, KEY_LEN, "master key")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("master key file %s is readable by others (mode %o): chmod 600 it",
                        path, stat.S_IMODE(mode))
        return key
    value = os.environ.get(k.passphrase_env or "")
    if not value:
        raise ConfigError(f"key.passphrase_env: environment variable {k.passphrase_env} is "
                          "not set (it must hold the passphrase)")
    return derive_key(value.encode(), bytes.fromhex(k.salt or ""), k.kdf)


def key_id(master_key: bytes) -> str:
    """Hex fingerprint of a master key (safe to print and log)."""
    return se2.key_id(master_key).hex()


def subkey(master_key: bytes, label: str) -> bytes:
    """A purpose-bound key derived from the master key (e.g. manifest backups)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"dispersiond {label} v1".encode()).derive(master_key)


def write_key_file(path: Path, key: bytes | None = None) -> bytes:
    """Create a new random key file with mode 0600; never overwrites an existing one."""
    key = key if key is not None else os.urandom(KEY_LEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=False, mode=0o600) as f:
        f.write(key)
    return key
