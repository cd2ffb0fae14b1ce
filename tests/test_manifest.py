"""Manifest backups: sealed with the key, unreadable without it, tampering detected."""
from __future__ import annotations

import os

import pytest

from dispersiond import manifest
from dispersiond.errors import IntegrityError, WrongKey


def test_manifest_backup_seal_and_open():
    key = os.urandom(32)
    doc = {"format": 1, "seq": 7, "files": [{"file_id": "ab" * 16, "name": "scan.dcm"}]}
    blob = manifest.seal(key, doc)
    assert blob[:5] == b"DSPM\x01" and b"scan.dcm" not in blob
    assert manifest.open_sealed(key, blob) == doc
    with pytest.raises(WrongKey):
        manifest.open_sealed(os.urandom(32), blob)
    bad = bytearray(blob)
    bad[40] ^= 1
    with pytest.raises(IntegrityError):
        manifest.open_sealed(key, bytes(bad))
