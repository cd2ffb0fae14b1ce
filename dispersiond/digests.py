"""Content digests: every digest of a file (its original, its private container, each
stored object) is made with one algorithm, recorded with the file (`digest_alg`).

BLAKE3 is the default: a 256-bit cryptographic hash that runs at several times the
speed of SHA-256 on one core (AVX2/AVX-512 on x86, NEON on ARM, where many edge boards
have no SHA instructions at all), and the daemon hashes every byte twice. SHA-256
remains readable (files protected before manifest format 2) and selectable
(`digest: sha256`) for sites whose rules require a FIPS 180-4 hash.
"""
from __future__ import annotations

import hashlib
from typing import Protocol

import blake3

ALGORITHMS = ("blake3", "sha256")
DEFAULT = "blake3"
LEGACY = "sha256"  # what a file recorded without an algorithm (format 1) was hashed with


class Hasher(Protocol):
    def update(self, data, /) -> object: ...

    def hexdigest(self) -> str: ...


def new(alg: str) -> Hasher:
    if alg == "blake3":
        return blake3.blake3()
    if alg == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {alg!r} (known: {', '.join(ALGORITHMS)})")


def of(alg: str, data) -> str:
    h = new(alg)
    h.update(data)
    return h.hexdigest()


def of_path(alg: str, path) -> str:
    h = new(alg)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
