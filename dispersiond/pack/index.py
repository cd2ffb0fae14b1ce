"""The sealed member index at the end of a pack (docs/FORMAT.md §8.3): encoding, sealing and
a strict, bounded parser. Nothing in it is ever in clear."""
from __future__ import annotations

import os
import struct
from typing import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import FormatError, IntegrityError
from . import layout
from .members import PackIndex, PackMember

_KIND_NAMES = {v: k for k, v in layout.KINDS.items()}
_DIGEST_NAMES = {v: k for k, v in layout.DIGEST_IDS.items()}
_HEADER = struct.Struct(">BBBxIQ")
_ENTRY = struct.Struct(">16sQQ32s")


def encode_index(kind: str, digest_alg: str, body_len: int,
                 members: Sequence[PackMember]) -> bytes:
    out = [_HEADER.pack(layout.VERSION, layout.KINDS[kind], layout.DIGEST_IDS[digest_alg],
                        len(members), body_len)]
    out += [_ENTRY.pack(m.ref, m.offset, m.length, bytes.fromhex(m.digest)) for m in members]
    return b"".join(out)


def seal_index(master_key: bytes, name: str, size: int, plain: bytes,
               randbytes: Callable[[int], bytes] = os.urandom) -> bytes:
    nonce = randbytes(layout.NONCE_LEN)
    key = layout.index_key(master_key)
    return nonce + AESGCM(key).encrypt(nonce, plain, layout.index_aad(name, size))


def parse_index(plain: bytes, name: str, size: int) -> PackIndex:
    """Every field checked: members back to back from offset 0, unique refs, known kind and
    digest, and the body inside the pack before the index."""
    where = f"pack {name}"
    if len(plain) < layout.INDEX_HEADER_LEN:
        raise FormatError(f"{where}: index is {len(plain)} bytes, shorter than its header: "
                          "the pack is damaged; run repair")
    version, kind, alg, count, body_len = _HEADER.unpack_from(plain)
    if version != layout.VERSION:
        raise FormatError(f"{where}: index version {version} is not read by this build "
                          "(upgrade dispersiond)")
    if kind not in _KIND_NAMES or alg not in _DIGEST_NAMES or plain[3]:
        raise FormatError(f"{where}: index names an unknown kind {kind} or digest {alg}: "
                          "upgrade dispersiond, or the pack is damaged; run repair")
    if count > layout.MAX_MEMBERS \
            or len(plain) != layout.INDEX_HEADER_LEN + count * layout.ENTRY_LEN:
        raise FormatError(f"{where}: index holds {len(plain)} bytes for {count} members: "
                          "the pack is damaged; run repair")
    if body_len + layout.index_len(count) + layout.FOOTER_LEN > size:
        raise FormatError(f"{where}: index says {body_len} member bytes, more than the "
                          f"{size}-byte pack holds: the pack is damaged; run repair")
    members, seen, at = [], set(), 0
    for i in range(count):
        at_entry = layout.INDEX_HEADER_LEN + i * layout.ENTRY_LEN
        ref, offset, length, digest = _ENTRY.unpack_from(plain, at_entry)
        if offset != at or length > body_len - at:
            raise FormatError(f"{where}: member {i} at {offset}+{length} is not where the one "
                              "before it ended: the pack is damaged; run repair")
        if ref in seen:
            raise FormatError(f"{where}: member {i} repeats a reference: the pack is damaged; "
                              "run repair")
        seen.add(ref)
        members.append(PackMember(ref, offset, length, digest.hex()))
        at += length
    if at != body_len:
        raise FormatError(f"{where}: members cover {at} of {body_len} body bytes: "
                          "the pack is damaged; run repair")
    return PackIndex(name, size, _KIND_NAMES[kind], _DIGEST_NAMES[alg], body_len, tuple(members))


def open_sealed(master_key: bytes, name: str, size: int, sealed: bytes) -> PackIndex:
    if not layout.index_len(0) <= len(sealed) <= layout.MAX_INDEX_LEN:
        raise FormatError(f"pack {name}: sealed index of {len(sealed)} bytes is out of bounds: "
                          "the pack is damaged; run repair")
    nonce, body = sealed[:layout.NONCE_LEN], sealed[layout.NONCE_LEN:]
    try:
        plain = AESGCM(layout.index_key(master_key)).decrypt(nonce, body,
                                                             layout.index_aad(name, size))
    except InvalidTag:
        raise IntegrityError(f"pack {name}: sealed index failed authentication (altered, "
                             "truncated, renamed, or under another master key): run verify "
                             "--deep, then repair") from None
    return parse_index(plain, name, size)
