"""Reading a pack: its sealed index (for recover, repair and the sweep, which may lack the
manifest) and its members, each unmasked and checked against its digest before use."""
from __future__ import annotations

from .. import digests
from ..errors import FormatError, IntegrityError
from . import layout
from .index import open_sealed
from .members import PackIndex, PackMember
from .source import Source, check_size, read_range


def open_index(master_key: bytes, name: str, source: Source, size: int) -> PackIndex:
    """Locate (masked footer), authenticate and parse the sealed index; two bounded reads."""
    where = f"pack {name}"
    if not layout.padded_size(0, 0, "none") <= size <= layout.MAX_PACK_SIZE:
        raise FormatError(f"{where}: size {size} is outside what a pack can be: "
                          "the manifest entry is damaged; recover from a backup")
    check_size(source, size, where)
    key = layout.body_key(master_key, name)
    raw = read_range(source, size - layout.FOOTER_LEN, layout.FOOTER_LEN, where)
    sealed_len = layout.read_footer(key, size, raw, where)
    start = size - layout.FOOTER_LEN - sealed_len
    return open_sealed(master_key, name, size, read_range(source, start, sealed_len, where))


def extract(source: Source, offset: int, length: int, *, master_key: bytes, name: str,
            digest: str | None = None, digest_alg: str = digests.DEFAULT) -> bytes:
    """One member's bytes from a whole pack or a ranged reader; with `digest`, refused
    unless they hash to it (a member is never returned unverified by a caller that knows it)."""
    where = f"pack {name}"
    if offset < 0 or length < 0 or offset + length > layout.MAX_PACK_SIZE:
        raise FormatError(f"{where}: member range {offset}+{length} is impossible: "
                          "the manifest entry is damaged; recover from a backup")
    data = layout.mask(layout.body_key(master_key, name), offset,
                       read_range(source, offset, length, where))
    if digest is not None and digests.of(digest_alg, data) != digest:
        raise IntegrityError(f"{where}: member at {offset}+{length} does not match its "
                             "digest (altered in the store): run repair")
    return data


class PackReader:
    """A pack opened through its index: members by reference, each verified."""

    def __init__(self, master_key: bytes, name: str, source: Source, size: int) -> None:
        self._key, self.name, self._source = master_key, name, source
        self.index = open_index(master_key, name, source, size)

    def member(self, m: PackMember) -> bytes:
        return extract(self._source, m.offset, m.length, master_key=self._key, name=self.name,
                       digest=m.digest, digest_alg=self.index.digest_alg)

    def get(self, ref: bytes) -> bytes:
        m = self.index.by_ref().get(bytes(ref))
        if m is None:
            raise FormatError(f"pack {self.name} holds no member {bytes(ref).hex()}: "
                              "the manifest and the pack disagree; run verify --deep")
        return self.member(m)

    def verify(self) -> list[PackMember]:
        """Deep verify: the members whose bytes no longer match their digests."""
        bad = []
        for m in self.index.members:
            try:
                self.member(m)
            except IntegrityError:
                bad.append(m)
        return bad


def covering_range(offset: int, length: int, size: int, align: int = 1 << 16) -> tuple[int, int]:
    """The aligned window (start, length) a ranged read of one member should fetch: a store
    that logs Range headers then learns blocks, not the member's exact boundaries."""
    if align <= 0 or offset < 0 or length < 0 or offset + length > size:
        raise FormatError(f"member range {offset}+{length} lies outside a {size}-byte pack: "
                          "the manifest entry is damaged; recover from a backup")
    if not length:
        return offset, 0  # an empty member needs no read
    start = offset - offset % align
    return start, min(size, -(-(offset + length) // align) * align) - start
