"""`dispersiond init`: a working starter configuration, a fresh master key and the
device's signing key for share bundles."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import DispersiondError
from ..fsutil import atomic_output
from ..keys import derive_key, key_id, write_key_file
from ._common import ask_passphrase

TEMPLATE = """\
# dispersiond configuration, written by 'dispersiond init'.
# Every setting is explained in config/dispersiond.example.yaml.
# Relative paths are relative to this file's folder.
version: 1
state_dir: state            # SQLite state, private containers, staged uploads
inbox: inbox                # files dropped here are protected by 'dispersiond run'
key:
{key}
trust_levels: [untrusted, trusted]
stores:
  # Three local folders stand in for three untrusted clouds (swap in s3/gcs/azure).
  - {{name: cloud-a, type: local, path: stores/cloud-a, trust: untrusted}}
  - {{name: cloud-b, type: local, path: stores/cloud-b, trust: untrusted}}
  - {{name: cloud-c, type: local, path: stores/cloud-c, trust: untrusted}}
  # The higher-trust store for backups of private containers and of the manifest.
  - {{name: vault, type: local, path: stores/vault, trust: trusted}}
public:
  mode: erasure             # any 2 of the 3 clouds rebuild a file; none holds all of it
  stores: [cloud-a, cloud-b, cloud-c]
  k: 2
  pad: padme                # pad object sizes so they leak less
private:
  min_trust: trusted
  stores: [vault]
after: keep                 # what happens to an inbox file once protected: keep | delete | move
stable_seconds: 2
schedule:
  rescan: 30s
  verify: 24h
  manifest_backup: 5m
"""


def register(sub) -> None:
    p = sub.add_parser("init", help="write a starter config (local stores) and a master key",
                       description="Create DIR/dispersiond.yaml with local-directory stores, "
                                   "and a random 32-byte master key (mode 0600), or derive the "
                                   "key from a passphrase with Argon2id.")
    p.add_argument("dir", nargs="?", default=".", help="folder to set up (default: here)")
    p.add_argument("--passphrase", action="store_true",
                   help="derive the key from a passphrase (read from $DISPERSIOND_PASSPHRASE, "
                        "or asked for) instead of writing a key file")
    p.set_defaults(func=_run)


def _sender_key(cfg_path: Path, master: bytes):
    """The device's signing key, made with the state directory (share/device.py)."""
    from ..config import load_config
    from ..share import device

    cfg = load_config(cfg_path)
    cfg.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return device.load_or_create(cfg.state_path, master)


def _run(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "dispersiond.yaml"
    if cfg_path.exists():
        raise DispersiondError(f"{cfg_path} already exists; init never overwrites a config")
    if args.passphrase:
        phrase = ask_passphrase(confirm=True, min_len=12)
        salt = os.urandom(16)
        master = derive_key(phrase.encode(), salt)
        key = (f"  passphrase_env: DISPERSIOND_PASSPHRASE   # set it in the service environment\n"
               f"  kdf: argon2id\n  salt: {salt.hex()}")
    else:
        kpath = root / "master.key"
        if kpath.exists():
            raise DispersiondError(f"{kpath} already exists; init never overwrites a key")
        master = write_key_file(kpath)
        key = "  file: master.key          # 32 random bytes, mode 0600: back it up offline!"
    with atomic_output(cfg_path, overwrite=False, mode=0o644) as f:
        f.write(TEMPLATE.format(key=key).encode())
    for sub in ("inbox", "stores"):
        (root / sub).mkdir(exist_ok=True)
    sender = _sender_key(cfg_path, master)
    print(f"wrote {cfg_path} (master key id {key_id(master)})")
    print(f"this device signs its shares as {sender.public} (fingerprint "
          f"{sender.fingerprint}): give it to recipients ('dispersiond identity' prints it)")
    print("keep a copy of the key (or passphrase) and the config somewhere safe: with them, "
          "'dispersiond recover' rebuilds everything on a new device")
    return 0
