"""What a pack knows about its members: plain records, shared by writer, reader and prune."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackMember:
    """One member, addressed as the manifest addresses any fragment (object, offset, length);
    `digest` is of the member's own (unmasked) bytes, by the pack's digest algorithm."""

    ref: bytes
    offset: int
    length: int
    digest: str

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class PackIndex:
    """The opened sealed index of one pack."""

    name: str
    size: int
    kind: str
    digest_alg: str
    body_len: int
    members: tuple[PackMember, ...]

    def by_ref(self) -> dict[bytes, PackMember]:
        return {m.ref: m for m in self.members}
