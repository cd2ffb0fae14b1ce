"""Building one pack: members appended back to back under the pack's mask, then random
padding, the sealed index and the masked footer (docs/FORMAT.md §8)."""
from __future__ import annotations

import os
from typing import BinaryIO, Callable, Union

from .. import digests
from ..errors import CodecError
from . import layout
from .index import encode_index, seal_index
from .members import PackIndex, PackMember

BLOCK = 1 << 20
MemberData = Union[bytes, bytearray, memoryview, BinaryIO]


class PackWriter:
    """Append members, take the output as it is produced (`drain`), then `close`.

    Output is only bytes: the caller uploads or stages them. `size()` is the stored size
    the pack will have if closed now, so an upload can be sized before it starts."""

    def __init__(self, master_key: bytes, name: str, *, kind: str = "public",
                 digest_alg: str = digests.DEFAULT, pad: str = "padme",
                 randbytes: Callable[[int], bytes] = os.urandom) -> None:
        if kind not in layout.KINDS:
            raise ValueError(f"pack kind {kind!r} (known: {', '.join(layout.KINDS)})")
        if digest_alg not in layout.DIGEST_IDS:
            raise ValueError(f"digest algorithm {digest_alg!r} "
                             f"(known: {', '.join(layout.DIGEST_IDS)})")
        self.name, self.kind, self.digest_alg, self.pad = name, kind, digest_alg, pad
        self._master_key = master_key
        self._masker = layout.Masker(layout.body_key(master_key, name))
        self._rand = randbytes
        self._out: list[bytes] = []
        self._members: list[PackMember] = []
        self._refs: set[bytes] = set()
        self.body_len = 0
        self.index: PackIndex | None = None
        self._broken = False

    def add(self, ref: bytes, data: MemberData) -> PackMember:
        """Append one member (bytes, or a stream read to its end); returns where it lies."""
        self._usable()
        ref = bytes(ref)
        if len(ref) != layout.REF_LEN or ref in self._refs:
            raise CodecError(f"pack {self.name}: member reference must be {layout.REF_LEN} "
                             "bytes and unique within the pack")
        if len(self._members) >= layout.MAX_MEMBERS:
            raise CodecError(f"pack {self.name} holds {layout.MAX_MEMBERS} members: "
                             "start a new pack")
        h, start = digests.new(self.digest_alg), self.body_len
        self._broken = True  # until the member is recorded: a failed stream spoils the pack
        for block in _blocks(data):
            h.update(block)
            self._out.append(self._masker.update(block))
            self.body_len += len(block)
            if self.body_len + layout.index_len(len(self._members) + 1) > layout.MAX_PACK_SIZE:
                raise CodecError(f"pack {self.name} would exceed {layout.MAX_PACK_SIZE} "
                                 "bytes: lower pack_size and start a new pack")
        self._broken = False
        member = PackMember(ref, start, self.body_len - start, h.hexdigest())
        self._members.append(member)
        self._refs.add(ref)
        return member

    @property
    def members(self) -> tuple[PackMember, ...]:
        return tuple(self._members)

    def size(self) -> int:
        return layout.padded_size(self.body_len, len(self._members), self.pad)

    def drain(self) -> bytes:
        """The masked body bytes produced since the last drain."""
        out, self._out = b"".join(self._out), []
        return out

    def _usable(self) -> None:
        if self.index is not None:
            raise CodecError(f"pack {self.name} is closed: start a new pack")
        if self._broken:
            raise CodecError(f"pack {self.name} lost a member while it was being added: "
                             "discard this pack and start a new one")

    def close(self) -> bytes:
        """The rest of the pack: undrained body, random padding, sealed index, footer."""
        self._usable()
        size = self.size()
        plain = encode_index(self.kind, self.digest_alg, self.body_len, self._members)
        sealed = seal_index(self._master_key, self.name, size, plain, self._rand)
        gap = size - self.body_len - len(sealed) - layout.FOOTER_LEN
        tail = [self.drain(), self._rand(gap), sealed,
                layout.footer(layout.body_key(self._master_key, self.name), size, len(sealed))]
        self.index = PackIndex(self.name, size, self.kind, self.digest_alg, self.body_len,
                               tuple(self._members))
        return b"".join(tail)


def build_pack(master_key: bytes, name: str, members: list[tuple[bytes, MemberData]],
               **kw) -> tuple[bytes, PackIndex]:
    """A whole pack in memory (tests, small flushes)."""
    w = PackWriter(master_key, name, **kw)
    for ref, data in members:
        w.add(ref, data)
    data = w.close()
    assert w.index is not None
    return data, w.index


def _blocks(data: MemberData):
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for i in range(0, len(view), BLOCK):
            yield view[i:i + BLOCK]
        return
    while True:
        block = data.read(BLOCK)
        if not block:
            return
        yield block
