"""Writing one pack to a local file from member bytes already at hand: rekey's fresh
objects, rotate-key's re-wrapped containers and re-masked public members. (`put` and the
daemon pack from the staged copies: ops/packing.py.)"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import digests
from ..pack import PackMember, PackWriter
from ..state import PackRow
from .upload import Upload


@dataclass(frozen=True)
class BuiltPack:
    """A pack written to `path`, not yet uploaded: its row, and its members in the order
    they were given."""

    row: PackRow
    members: tuple[PackMember, ...]
    path: Path

    def upload(self) -> Upload:
        """The upload of this pack (a fresh name: never resumed)."""
        r = self.row
        return Upload("", r.store, r.name, self.path, r.size, r.digest, r.digest_alg,
                      resumable=False)


#: A pack's staged file is written through a buffer this large: a write a member (256
#: a pack of 16 KiB records) was a system call each, and each one a GIL hand-off.
PACK_WRITE_BUFFER = 1 << 20


def write_pack(key: bytes, store: str, name: str, kind: str, digest_alg: str, pad: str,
               members: Iterable[tuple[str, bytes]], path: Path) -> BuiltPack:
    """Pack `members` ((file id, bytes), one per file) under `key` into `path`; the pack's
    digest is made as it is written."""
    w = PackWriter(key, name, kind=kind, digest_alg=digest_alg, pad=pad)
    h = digests.new(digest_alg)
    with open(path, "wb", buffering=PACK_WRITE_BUFFER) as out:
        for file_id, data in members:
            w.add(bytes.fromhex(file_id), data)
            chunk = w.drain()
            h.update(chunk)
            out.write(chunk)
        tail = w.close()
        h.update(tail)
        out.write(tail)
    assert w.index is not None
    now = time.time()
    row = PackRow(store=store, name=name, kind=kind, size=w.index.size, digest=h.hexdigest(),
                  digest_alg=digest_alg, body_len=w.index.body_len, members=len(w.members),
                  created=now, state="uploaded", checked=now)
    return BuiltPack(row, w.members, path)
