"""Master key: loaded from a raw key file or derived from a passphrase (Argon2id).

The master key only wraps per-file secrets and manifest backups (docs/FORMAT.md),
so rotating it never touches a public fragment. A process that holds it is made
non-dumpable with core dumps off first (no core file, no ptrace by other processes of
the same user), and a passphrase taken from the environment is removed from it once
the key is derived (docs/SECURITY.md says what /proc still shows and how to avoid it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import stat
import sys
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


#: A file holding the passphrase (takes precedence over the environment variable).
PASSPHRASE_FILE_ENV = "DISPERSIOND_PASSPHRASE_FILE"
#: systemd's LoadCredential=passphrase:... puts it in $CREDENTIALS_DIRECTORY/passphrase.
CREDENTIAL_NAME = "passphrase"
_PR_SET_DUMPABLE = 4
#: Keys derived in this process, by (variable, salt, kdf): the variable is gone after the
#: first load, and a command may open the archive more than once.
_DERIVED: dict[tuple, bytes] = {}


def protect_process() -> None:
    """No core dump and no ptrace by same-user processes from here on: the process is about
    to hold key material. Idempotent; a no-op where the calls do not exist."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ValueError, OSError):  # pragma: no cover - a hard limit we cannot lower
        log.warning("could not disable core dumps (RLIMIT_CORE); set LimitCORE=0 in the unit")
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:  # pragma: no cover
        log.warning("could not make the process non-dumpable (prctl: %s)",
                    os.strerror(ctypes.get_errno()))


def _passphrase_file(path: Path, what: str) -> bytes:
    """A passphrase file's content without its trailing newline."""
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the passphrase file {path} ({what}): "
                          f"{exc.strerror or exc}; check the path and its owner") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("passphrase file %s is readable by others (mode %o): chmod 600 it",
                    path, stat.S_IMODE(mode))
    phrase = data.rstrip(b"\r\n")
    if not phrase:
        raise ConfigError(f"the passphrase file {path} ({what}) is empty")
    return phrase


def passphrase(env_name: str | None) -> bytes:
    """The passphrase: from $DISPERSIOND_PASSPHRASE_FILE, else a systemd credential
    ($CREDENTIALS_DIRECTORY/passphrase), else the variable `env_name`, which is then
    removed from this process's environment (children never inherit it)."""
    named = os.environ.get(PASSPHRASE_FILE_ENV)
    if named:
        return _passphrase_file(Path(named), f"${PASSPHRASE_FILE_ENV}")
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).exists():
        return _passphrase_file(Path(creds) / CREDENTIAL_NAME, "systemd credential")
    value = os.environ.pop(env_name or "", None)
    if not value:
        raise ConfigError(f"key.passphrase_env: environment variable {env_name} is not set "
                          f"(it must hold the passphrase; or name a file holding it in "
                          f"${PASSPHRASE_FILE_ENV}, or pass it as the systemd credential "
                          f"'{CREDENTIAL_NAME}')")
    return value.encode()


def derive_key(passphrase: bytes, salt: bytes, kdf: str = "argon2id") -> bytes:
    """A 32-byte master key from a passphrase; memory-hard so guessing costs."""
    protect_process()
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
    protect_process()
    k = cfg.key
    if k.file is not None:
        path = cfg.path(k.file)
        key = read_key_file(path, KEY_LEN, "master key")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("master key file %s is readable by others (mode %o): chmod 600 it",
                        path, stat.S_IMODE(mode))
        return key
    which = (k.passphrase_env, k.salt, k.kdf)
    try:
        phrase = passphrase(k.passphrase_env)
    except ConfigError:
        if which in _DERIVED:  # the variable was consumed by an earlier load in this process
            return _DERIVED[which]
        raise
    _DERIVED[which] = key = derive_key(phrase, bytes.fromhex(k.salt or ""), k.kdf)
    return key


def key_id(master_key: bytes) -> str:
    """Hex fingerprint of a master key (safe to print and log)."""
    return se2.key_id(master_key).hex()


def subkey(master_key: bytes, label: str) -> bytes:
    """A purpose-bound key derived from the master key (e.g. manifest backups)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"dispersiond {label} v1".encode()).derive(master_key)


def write_key_file(path: Path, key: bytes | None = None) -> bytes:
    """Create a new random key file with mode 0600; never overwrites an existing one."""
    protect_process()
    key = key if key is not None else os.urandom(KEY_LEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=False, mode=0o600) as f:
        f.write(key)
    return key
