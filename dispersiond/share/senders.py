"""Which sending devices a recipient trusts: pins given on the command line, and the
known-senders file next to the identity (`dr-lee.key` -> `dr-lee.key.senders`), written
by `dispersiond trust NAME KEY`.

The file is text, one `NAME dspsig1...` line per device, '#' comments allowed: a doctor
can read it and keep it with the identity, like ssh's known_hosts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import atomic_output
from ..identity import Identity, IdentityError, decode_signing_public, fingerprint
from .bundle import Sealed
from .errors import ShareError, UnknownSender, UnsignedBundle

SUFFIX = ".senders"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


@dataclass(frozen=True)
class Sender:
    """Who made a bundle, as the recipient knows them."""

    name: str | None  # the recipient's name for the device; None if not pinned
    key: str | None  # dspsig1...; None for an unsigned bundle
    fingerprint: str | None
    signed: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "fingerprint": self.fingerprint,
                "signed": self.signed, "pinned": self.name is not None}

    def describe(self) -> str:
        if not self.signed:
            return "an UNSIGNED bundle (sender unknown)"
        who = self.name if self.name else "an UNKNOWN device"
        return f"{who} (fingerprint {self.fingerprint})"


def senders_path(identity_path: Path) -> Path:
    return identity_path.with_name(identity_path.name + SUFFIX)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ShareError(f"sender name {name!r} is not usable: use 1-64 letters, digits and "
                         "._@+- (no spaces), starting with a letter or digit")
    return name


def load_senders(path: Path) -> dict[bytes, str]:
    """Sender key -> name from a known-senders file; {} if there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ShareError(f"cannot read known-senders file {path}: "
                         f"{getattr(exc, 'strerror', None) or 'not a text file'}") from None
    out: dict[bytes, str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ShareError(f"{path} line {no}: expected 'NAME dspsig1...'; fix or remove it")
        try:
            out[decode_signing_public(parts[1], f"{path} line {no}")] = check_name(parts[0])
        except (IdentityError, ShareError) as exc:
            raise ShareError(f"{exc}; fix or remove that line") from None
    return out


def trust(path: Path, name: str, key_text: str) -> tuple[bytes, bool]:
    """Add `name` -> key to a known-senders file; returns (key, whether it was new).

    A name already pinned to another key is refused: a changed device key is exactly
    what a forger would try, so it takes removing the old line by hand."""
    check_name(name)
    key = decode_signing_public(key_text)
    known = load_senders(path)
    if known.get(key) == name:
        return key, False
    if key in known:
        raise ShareError(f"that key is already trusted as {known[key]!r} in {path}; remove that "
                         "line first to rename it")
    if name in known.values():
        raise ShareError(f"{name!r} is already trusted with another key in {path}: if the "
                         "device really has a new key (check its fingerprint with its owner), "
                         "remove the old line first")
    old = path.read_text() if path.exists() else (
        "# Devices whose share bundles open-share accepts: NAME dspsig1...\n")
    if old and not old.endswith("\n"):
        old += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True, mode=0o600) as f:
        f.write(f"{old}{name} {key_text.strip()}\n".encode())
    return key, True


def pins(identity: Identity, extra: list[str] | tuple[str, ...] = (),
         senders_file: Path | None = None) -> dict[bytes, str]:
    """The senders a recipient trusts: the known-senders file (next to the identity, or
    the one given) and any keys given on the command line (named by fingerprint)."""
    path = senders_file or (senders_path(identity.path) if identity.path else None)
    known = load_senders(path) if path else {}
    for text in extra:
        try:
            key = decode_signing_public(text, "--sender")
        except IdentityError as exc:
            raise ShareError(str(exc)) from None
        known.setdefault(key, f"sender {fingerprint(key)}")
    return known


def decide(sealed: Sealed, known: dict[bytes, str], *, accept_unknown: bool = False,
           accept_unsigned: bool = False) -> Sender:
    """Who sent it, or the refusal the recipient needs to see before anything is fetched."""
    from ..identity import encode_signing_public

    if sealed.sender is None:
        if not accept_unsigned:
            raise UnsignedBundle("this is an old-format (version 1) bundle with no sender "
                                 "signature: anyone who knows your public key could have made "
                                 "it. Ask the sender for a new share, or pass --accept-unsigned "
                                 "only if you got it from them in person")
        return Sender(None, None, None, False)
    fpr = fingerprint(sealed.sender)
    name = known.get(sealed.sender)
    key = encode_signing_public(sealed.sender)
    if name is None and not accept_unknown:
        raise UnknownSender(f"this bundle is signed by a device you have not trusted "
                            f"(fingerprint {fpr}, key {key}): check the fingerprint with the "
                            "sender, then 'dispersiond trust NAME KEY --identity YOURKEY' (or "
                            "--sender KEY, or --accept-unknown-sender)")
    return Sender(name, key, fpr, True)
