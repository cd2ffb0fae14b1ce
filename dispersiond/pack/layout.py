"""Pack object layout version 1 (docs/FORMAT.md §8): keys, the body mask, the footer and
the padded size. Pure functions; the constants bound every length a reader accepts."""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import placement
from ..errors import FormatError

VERSION = 1
KINDS = {"public": 1, "private": 2}
DIGEST_IDS = {"blake3": 1, "sha256": 2}
REF_LEN = 16             # a member's reference (the wiring uses the file id)
ENTRY_LEN = 64           # ref 16 | offset 8 | length 8 | digest 32
INDEX_HEADER_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
FOOTER_LEN = 8
SEAL_OVERHEAD = NONCE_LEN + TAG_LEN
MAX_MEMBERS = 1 << 20
MAX_INDEX_LEN = SEAL_OVERHEAD + INDEX_HEADER_LEN + MAX_MEMBERS * ENTRY_LEN
MAX_PACK_SIZE = 1 << 36  # 64 GiB: far above any pack_size, small enough to bound a reader
INDEX_AAD_MAGIC = b"DSPK"


def name_bytes(name: str) -> bytes:
    """The 16 bytes behind an opaque object name (32 lowercase hex digits)."""
    if not isinstance(name, str) or len(name) != 32 or name.lower() != name:
        raise FormatError(f"pack name {name!r} is not 32 lowercase hex digits: "
                          "pass the object's name without any store prefix")
    try:
        return bytes.fromhex(name)
    except ValueError:
        raise FormatError(f"pack name {name!r} is not 32 lowercase hex digits: "
                          "pass the object's name without any store prefix") from None


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def body_key(master_key: bytes, name: str) -> bytes:
    """One mask key per pack: names are never reused, so a CTR stream from 0 is safe."""
    return _hkdf(master_key, b"dispersiond pack v1 body" + name_bytes(name))


def index_key(master_key: bytes) -> bytes:
    return _hkdf(master_key, b"dispersiond pack v1 index")


def index_aad(name: str, size: int) -> bytes:
    """Binds the index to its pack's name and padded size: a moved, renamed, truncated or
    extended pack fails the tag."""
    return INDEX_AAD_MAGIC + bytes([VERSION]) + name_bytes(name) + struct.pack(">Q", size)


def mask(key: bytes, offset: int, data) -> bytes:
    """XOR `data` with the AES-256-CTR keystream of `key` starting at byte `offset`
    (random access: a member is unmasked without reading what precedes it)."""
    block, skip = divmod(offset, 16)
    ctx = Cipher(algorithms.AES(key), modes.CTR(block.to_bytes(16, "big"))).encryptor()
    if skip:
        ctx.update(bytes(skip))
    return ctx.update(bytes(data)) + ctx.finalize()


class Masker:
    """The body mask as a stream, for a writer that appends member after member."""

    def __init__(self, key: bytes) -> None:
        self._ctx = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def update(self, data) -> bytes:
        return self._ctx.update(bytes(data))


def index_len(count: int) -> int:
    return SEAL_OVERHEAD + INDEX_HEADER_LEN + count * ENTRY_LEN


def padded_size(body_len: int, count: int, pad: str = "padme") -> int:
    """The pack's stored size: depends on the member bytes' total and count, never on
    where one member ends and the next begins."""
    return placement.padded(body_len + index_len(count) + FOOTER_LEN, pad)


def footer(key: bytes, size: int, sealed_len: int) -> bytes:
    plain = struct.pack(">IB3x", sealed_len, VERSION)
    return mask(key, size - FOOTER_LEN, plain)


def read_footer(key: bytes, size: int, raw: bytes, where: str) -> int:
    """The sealed index's length, from the masked footer; refuses anything out of bounds
    before a byte of the index is read."""
    if len(raw) != FOOTER_LEN:
        raise FormatError(f"{where}: footer is {len(raw)} bytes, not {FOOTER_LEN}: "
                          "the pack is truncated; run repair")
    sealed_len, version, z1, z2, z3 = struct.unpack(">IB3B", mask(key, size - FOOTER_LEN, raw))
    if version != VERSION or z1 or z2 or z3:
        raise FormatError(f"{where}: not a version {VERSION} pack under this master key "
                          "(altered, another key, or another name): run verify --deep")
    if not (index_len(0) <= sealed_len <= min(MAX_INDEX_LEN, size - FOOTER_LEN)) \
            or (sealed_len - index_len(0)) % ENTRY_LEN:
        raise FormatError(f"{where}: footer gives an impossible index length "
                          f"{sealed_len} for a {size}-byte pack: the pack is damaged; run repair")
    return sealed_len
