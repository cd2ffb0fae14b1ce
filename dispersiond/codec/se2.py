"""se2: the hardened selective-encryption scheme (the default). Format: docs/FORMAT.md.

Pure: state machines over caller-supplied buffers, no I/O. Randomness is drawn
only when the caller does not pass it (test vectors pass it).
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import FormatError, FragmentMismatch, IntegrityError, TruncatedError, WrongKey
from . import split as _split
from .split import UNIT, SplitBuffers, merge_swap, split_swap

PRF_MAGIC = b"DSPR"
PUF_MAGIC = b"DSPU"
VERSION = 2  # what the codec's writers produce; version 1 is still read (and written for vectors)
VERSIONS = (1, 2)
SCHEME_ID = 2
KEY_LEN = 32
TAG = 16
DEFAULT_CHUNK_LOG2 = 18  # 256 KiB of content per chunk: fastest here (scratch stays in L2)
MIN_CHUNK_LOG2, MAX_CHUNK_LOG2 = 10, 24
MAX_HEAD = 1 << 20

BIND = struct.Struct(">4sBBBB16sQI")  # magic version scheme chunk_log2 flags file_id content_len head_len
BIND_LEN = BIND.size  # 36
PRF_HEADER_LEN = BIND_LEN + 8 + 12 + KEY_LEN + TAG  # 104
PUF_HEADER = struct.Struct(">4sBBBB16sQ")  # magic version scheme chunk_log2 flags file_id content_len
PUF_HEADER_LEN = PUF_HEADER.size  # 32
PUF_HEADER_V2 = struct.Struct(">4sBBBB24s")  # magic version scheme chunk_log2 flags pair
META = struct.Struct(">16sBB6xQ")  # version 2, segment 1: file_id codec digest_alg plain_len
META_LEN = META.size  # 32
DIGEST_LEN = 32  # version 2, compressed content: digest of the original in the last segment


_SHA256 = hashlib.sha256
_X36 = bytes(b ^ 0x36 for b in range(256))  # HMAC's ipad and opad, as byte translations
_X5C = bytes(b ^ 0x5C for b in range(256))


def _hmac_states(key: bytes) -> tuple:
    """HMAC-SHA256 (RFC 2104) with `key` (at most 64 bytes) absorbed: the inner and the
    outer hash after their first block, to be copied for each message."""
    block = key.ljust(64, b"\0")
    return _SHA256(block.translate(_X36)), _SHA256(block.translate(_X5C))


def _hmac(states: tuple, msg: bytes) -> bytes:
    inner, outer = states[0].copy(), states[1].copy()
    inner.update(msg)
    outer.update(inner.digest())
    return outer.digest()


_EXTRACT = _hmac_states(bytes(32))  # salt None: HashLen zero bytes


class Hkdf:
    """HKDF-SHA256 (RFC 5869) with no salt and 32-byte outputs, as in docs/FORMAT.md 2.1:
    the same bytes as `cryptography`'s HKDF, but one extract per input key and two hash
    compressions per label (the object-per-derivation API cost ~5 us each, and a file's
    encode derives six keys: a quarter of the fixed cost of a small file)."""

    def __init__(self, ikm: bytes) -> None:
        self._prk = _hmac_states(_hmac(_EXTRACT, bytes(ikm)))

    def derive(self, info: bytes) -> bytes:
        return _hmac(self._prk, info + b"\x01")  # T(1) = HMAC(PRK, info || 0x01)


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return Hkdf(ikm).derive(info)


_MASTERS: list[tuple[bytes, bytes, bytes]] = []  # (master key, key_id, K_wrap), newest first


def _master(master_key: bytes) -> tuple[bytes, bytes]:
    """(key_id, K_wrap) of a master key. The last two keys' are kept: every file of an
    archive is wrapped under one key (two while it is rotated), and the derivations
    would otherwise be paid per file. The key itself is held by the caller anyway."""
    check_key(master_key)
    for mk, kid, wrap in _MASTERS:
        if hmac.compare_digest(mk, master_key):
            return kid, wrap
    h = Hkdf(master_key)
    entry = (bytes(master_key), h.derive(b"dispersiond se2 v1 key-id")[:8],
             h.derive(b"dispersiond se2 v1 wrap"))
    _MASTERS[:] = [entry, *_MASTERS[:1]]
    return entry[1], entry[2]


def key_id(master_key: bytes) -> bytes:
    """8-byte public fingerprint of a master key: tells a wrong key from tampering."""
    return _master(master_key)[0]


def check_key(master_key: bytes) -> None:
    """A master key of the wrong type or length is a usage error, said before any work."""
    if not isinstance(master_key, (bytes, bytearray)) or len(master_key) != KEY_LEN:
        raise ValueError(f"se2 needs a {KEY_LEN}-byte master key")


# Layout and Meta are frozen dataclasses made several times per file: their __init__
# fills the instance dict directly (a generated frozen __init__ goes through
# object.__setattr__ per field, ~1 us a field, a measurable share of a small file).


@dataclass(frozen=True, init=False)
class Layout:
    """Everything the sizes of both fragments follow from."""

    chunk_log2: int
    content_len: int
    head_len: int
    version: int = VERSION
    trailer_len: int = 0  # version 2: digest bytes after the tail in the final segment

    def __init__(self, chunk_log2: int, content_len: int, head_len: int,
                 version: int = VERSION, trailer_len: int = 0) -> None:
        d = self.__dict__
        d["chunk_log2"], d["content_len"], d["head_len"] = chunk_log2, content_len, head_len
        d["version"], d["trailer_len"] = version, trailer_len

    @property
    def units(self) -> int:
        return self.content_len // UNIT

    @property
    def units_per_chunk(self) -> int:
        return (1 << self.chunk_log2) // UNIT

    @property
    def tail_len(self) -> int:
        return self.content_len - self.units * UNIT

    def chunk_units(self) -> Iterator[int]:
        left = self.units
        while left > 0:
            n = min(left, self.units_per_chunk)
            yield n
            left -= n

    @property
    def chunks(self) -> int:
        return -(-self.units // self.units_per_chunk)

    @property
    def puf_len(self) -> int:
        return PUF_HEADER_LEN + 28 * self.units + TAG * self.chunks

    @property
    def prf_len(self) -> int:
        meta = META_LEN + TAG if self.version >= 2 else 0
        return (PRF_HEADER_LEN + self.head_len + TAG + meta + 4 * self.units
                + TAG * self.chunks + self.tail_len + self.trailer_len + TAG)

    @property
    def first_chunk_segment(self) -> int:
        """Index of chunk 0's segment: after the head (and, in version 2, the metadata)."""
        return 2 if self.version >= 2 else 1


@dataclass(frozen=True, init=False)
class Meta:
    """What a version 2 container seals about the original (segment 1)."""

    file_id: bytes = bytes(16)
    codec: int = 0  # 0: content is the original; 1: content is a zstd frame of it
    digest_alg: int = 0  # 0 with codec 0; else the digest in the last segment (1 blake3, 2 sha256)
    plain_len: int = 0  # bytes of the original after the head

    def __init__(self, file_id: bytes = bytes(16), codec: int = 0, digest_alg: int = 0,
                 plain_len: int = 0) -> None:
        d = self.__dict__
        d["file_id"], d["codec"], d["digest_alg"], d["plain_len"] = (file_id, codec,
                                                                     digest_alg, plain_len)

    def pack(self) -> bytes:
        return META.pack(self.file_id, self.codec, self.digest_alg, self.plain_len)

    @classmethod
    def unpack(cls, data: bytes) -> "Meta":
        if len(data) != META_LEN or any(data[18:24]):
            raise IntegrityError("private container metadata is malformed")
        fid, codec, alg, plain = META.unpack(data)
        m = cls(fid, codec, alg, plain)
        if codec not in (0, 1) or (codec == 0) != (alg == 0):
            raise FormatError(f"private container uses codec {codec} / digest {alg}, which "
                              "this build does not read: upgrade dispersiond")
        return m

    @property
    def trailer_len(self) -> int:
        return DIGEST_LEN if self.codec else 0


_PAIR_INFO = b"dispersiond se2 v2 pair"


def pair_tag(secret: bytes) -> bytes:
    """The version 2 public header's pairing value: random to anyone without s, so it
    links the fragment to nothing, yet lets the decoder tell mixed-up files apart."""
    return _hkdf(secret, _PAIR_INFO)[:24]


_ZERO_NONCE = bytes(12)
_CTR_ZERO = modes.CTR(bytes(16))  # holds only its (constant) initial counter block: shared


class _Keys:
    """Per-file keys, all derived from the file secret s (never from the master key)."""

    def __init__(self, secret: bytes, bind: bytes, version: int = 1) -> None:
        self.bind = bind
        h = Hkdf(secret)
        self.seg = AESGCM(h.derive(b"dispersiond se2 v1 container"))
        self.pad = h.derive(b"dispersiond se2 v1 pad")
        self.pos = Cipher(algorithms.AES(h.derive(b"dispersiond se2 v1 positions")),
                          _CTR_ZERO).encryptor()
        self.pair = h.derive(_PAIR_INFO)[:24] if version >= 2 else b""

    def pad_key(self, chunk: int, seg_tag) -> bytes:
        # The public pad depends on s and on the authenticated digest (GCM tag) of
        # this chunk's private words: the private part keys the public part.
        return hmac.digest(self.pad, chunk.to_bytes(8, "big") + bytes(seg_tag), "sha256")

    @staticmethod
    def nonce(index: int, last: bool) -> bytes:
        return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


_ZEROS = memoryview(bytes(1 << 13))  # the position keystream's input: one byte per unit


def _zeros(n: int) -> memoryview:
    """n zero bytes, shared (read only): a chunk of the default size fits the kept ones."""
    return _ZEROS[:n] if n <= len(_ZEROS) else memoryview(bytes(n))


def _aligned(*sizes: int) -> list[np.ndarray]:
    """uint8 scratch arrays, each starting on a 64-byte (cache line) boundary: the vector
    kernels and the non-temporal copy then write whole lines. One allocation for all
    (a small file's encode made three, a measurable part of its fixed cost)."""
    spans = [-(-n // 64) * 64 for n in sizes]
    raw = np.empty(sum(spans) + 64, dtype=np.uint8)
    at = -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % 64  # (raw.ctypes costs 2x)
    out = []
    for n, span in zip(sizes, spans):
        out.append(raw[at: at + n])
        at += span
    return out


class _Chunker:
    """Scratch buffers and the position keystream shared by encoder and decoder."""

    def __init__(self, layout: Layout, keys: _Keys) -> None:
        self.layout = layout
        self.keys = keys
        u = min(layout.units_per_chunk, max(layout.units, 1))
        # the keystream's output needs a block of slack (update_into's rule)
        self.work, self.pub, self.seg, self._ks = _aligned(u * UNIT, u * 28 + 2 * TAG,
                                                           u * 4 + 2 * TAG, u + 16)
        # memoryviews of the same scratch: slicing them per chunk is cheaper than numpy's
        self.pub_v, self.seg_v = memoryview(self.pub), memoryview(self.seg)
        self._second: tuple[memoryview, memoryview] | None = None
        self._zeros = _zeros(u)
        self._ks_v = memoryview(self._ks)
        self._units = u
        self._split: SplitBuffers | None = None  # the numpy kernels' scratch, made on use
        self.chunk = 0

    @property
    def split(self) -> SplitBuffers:
        if self._split is None:
            self._split = SplitBuffers(self._units)
        return self._split

    def second_scratch(self) -> tuple[memoryview, memoryview]:
        """A second (pub, seg) scratch pair, for working on two chunks at once."""
        if self._second is None:
            pub, seg = _aligned(self.pub.size, self.seg.size)
            self._second = (memoryview(pub), memoryview(seg))
        return self._second

    def keystream(self, n: int) -> memoryview:
        """The next n position bytes (one per unit; the low 3 bits are the word index)."""
        self.keys.pos.update_into(self._zeros[:n], self._ks)
        return self._ks_v[:n]

    def positions(self, n: int) -> np.ndarray:
        """The next n word indexes, for the numpy kernels."""
        self.keystream(n)
        return self.split.positions(self._ks[:n])


class Se2Encoder:
    """Streaming encoder. Feed content chunk by chunk into `work`, collect both fragments.

    Usage: write `puf_header` and `prf_header`; for each n in `chunk_units()`, fill
    `work[:32n]` with the next content bytes and write the pieces `encode_chunk(n)`
    returns; then write `finish(tail)` to the private fragment.
    """

    def __init__(self, master_key: bytes, content_len: int, head: bytes = b"", *,
                 file_id: bytes | None = None, secret: bytes | None = None,
                 wrap_nonce: bytes | None = None,
                 chunk_log2: int = DEFAULT_CHUNK_LOG2, meta: Meta | None = None) -> None:
        """`meta` given: a version 2 container (it seals `meta`; `file_id`, if given,
        replaces meta's, and a zero one in meta means "not chosen": random), else
        version 1 (the file id in clear in both headers)."""
        check_key(master_key)
        if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
            raise ValueError(f"chunk_log2 must be in {MIN_CHUNK_LOG2}..{MAX_CHUNK_LOG2}")
        if len(head) > MAX_HEAD:
            raise ValueError(f"format header longer than {MAX_HEAD} bytes")
        if content_len < 0:
            raise ValueError("content length must be >= 0")
        if file_id is None and meta is not None and any(meta.file_id):
            file_id = meta.file_id
        self.file_id = file_id if file_id is not None else os.urandom(16)
        if len(self.file_id) != 16:
            raise ValueError("file_id must be 16 bytes")
        secret = secret if secret is not None else os.urandom(KEY_LEN)
        wrap_nonce = wrap_nonce if wrap_nonce is not None else os.urandom(12)
        version = 1 if meta is None else 2
        self.layout = Layout(chunk_log2, content_len, len(head), version,
                             meta.trailer_len if meta else 0)
        if meta is not None and meta.codec == 0 and meta.plain_len != content_len:
            raise ValueError("uncompressed content: plain_len must equal the content length")
        # version 2 keeps the file id out of every clear header (sealed in segment 1)
        bind = BIND.pack(PRF_MAGIC, version, SCHEME_ID, chunk_log2, 0,
                         self.file_id if version == 1 else bytes(16), content_len, len(head))
        kid, wrap = _master(master_key)
        wrapped = AESGCM(wrap).encrypt(wrap_nonce, secret, bind + kid)
        self.keys = _Keys(secret, bind, version)
        self._c = _Chunker(self.layout, self.keys)
        self.work = self._c.work
        if version == 1:
            self.puf_header = PUF_HEADER.pack(PUF_MAGIC, 1, SCHEME_ID, chunk_log2, 0,
                                              self.file_id, content_len)
        else:  # no length and no id in clear: only what every fragment of this build shows
            self.puf_header = PUF_HEADER_V2.pack(PUF_MAGIC, 2, SCHEME_ID, chunk_log2, 0,
                                                 self.keys.pair)
        seg0 = self.keys.seg.encrypt(_Keys.nonce(0, False), head, bind)
        self.prf_header = bind + kid + wrap_nonce + wrapped + seg0
        if meta is not None:
            m = META.pack(self.file_id, meta.codec, meta.digest_alg, meta.plain_len)
            self.prf_header += self.keys.seg.encrypt(_Keys.nonce(1, False), m, bind)

    def chunk_units(self) -> Iterator[int]:
        return self.layout.chunk_units()

    def encode_chunk(self, n: int, puf_out: np.ndarray | None = None, src=None,
                     prf_out: np.ndarray | None = None) -> tuple[memoryview, memoryview]:
        """Encode the next n units; returns (public piece, private segment).

        The units are read from `src` (32n bytes, left untouched) or else from
        `work` (which is then scrambled). With `puf_out` (28n+16 bytes) and
        `prf_out` (4n+16 bytes) the pieces are written there; otherwise they
        are views into internal scratch, valid until the next call.
        """
        c = self._c
        pub = c.pub_v if puf_out is None else memoryview(puf_out)
        seg = c.seg_v if prf_out is None else memoryview(prf_out)
        self._split(n, c.work if src is None else src, pub, seg)
        self._seal(n, pub, seg)
        return pub[: 28 * n + TAG], seg[: 4 * n + TAG]

    def encode_body(self, src, puf_body, prf_body, *, stream: bool = False) -> None:
        """Encode every chunk: src holds the 32 * layout.units content bytes after the
        head; the pieces go back to back into puf_body and the segments into prf_body
        (the fragments after their headers: 28 * units + 16 * chunks bytes and
        4 * units + 16 * chunks bytes).

        stream=True is for outputs far larger than the CPU caches that are not read
        again soon (a whole-file encode): each chunk is split and sealed in
        cache-resident scratch, and its pieces are written out around the caches
        while the next chunk is split, so that the reads and the writes overlap.
        """
        native = _split.native
        sizes = list(self.chunk_units())
        src, puf_body, prf_body = memoryview(src), memoryview(puf_body), memoryview(prf_body)
        if not stream or native is None or not sizes:
            q = p = off = 0
            for n in sizes:
                self.encode_chunk(n, puf_body[q: q + 28 * n + TAG], src[off: off + 32 * n],
                                  prf_body[p: p + 4 * n + TAG])
                q, p, off = q + 28 * n + TAG, p + 4 * n + TAG, off + 32 * n
            return
        c = self._c
        scratch = ((c.pub_v, c.seg_v), c.second_scratch())
        n = sizes[0]
        native.split(src[: 32 * n], c.keystream(n), c.pub_v, c.seg_v, n)
        q = p = off = 0
        for i, n in enumerate(sizes):
            pub, seg = scratch[i & 1]
            self._seal(n, pub, seg)
            out = ((puf_body[q: q + 28 * n + TAG], pub[: 28 * n + TAG]),
                   (prf_body[p: p + 4 * n + TAG], seg[: 4 * n + TAG]))
            q, p, off = q + 28 * n + TAG, p + 4 * n + TAG, off + 32 * n
            if i + 1 < len(sizes):  # split the next chunk while this one is written out
                m = sizes[i + 1]
                npub, nseg = scratch[~i & 1]
                native.split(src[off: off + 32 * m], c.keystream(m), npub, nseg, m,
                             flush=out)
            else:
                for dst, piece in out:
                    native.stream_copy(dst, piece)

    def _split(self, n: int, src, pub, seg) -> None:
        """Split n units of src: public words into pub (28n bytes), private into seg."""
        c = self._c
        native = _split.native
        if native is not None:
            native.split(src, c.keystream(n), pub, seg, n)
        else:
            if src is not c.work:
                np.copyto(c.work[: 32 * n], np.frombuffer(src, dtype=np.uint8, count=32 * n))
            pub_a = np.frombuffer(pub, dtype=np.uint8)
            seg_a = np.frombuffer(seg, dtype=np.uint8)
            split_swap(c.work, n, c.positions(n), pub_a, seg_a[: 4 * n].view(np.uint32))

    def _seal(self, n: int, pub: memoryview, seg: memoryview) -> None:
        """Seal a split chunk in place: seg (4n words + tag), then pub (28n + tag)."""
        c = self._c
        keys = self.keys
        # Seal the private words; their tag keys the public pad.
        keys.seg.encrypt_into(_Keys.nonce(c.chunk + self.layout.first_chunk_segment, False),
                              seg[: 4 * n], keys.bind,
                              seg[: 4 * n + TAG])
        pad = AESGCM(keys.pad_key(c.chunk, seg[4 * n: 4 * n + TAG]))
        pad.encrypt_into(_ZERO_NONCE, pub[: 28 * n], self.puf_header, pub[: 28 * n + TAG])
        c.chunk += 1

    def finish(self, tail: bytes, digest: bytes = b"") -> bytes:
        """The final private segment: the content's last (< 32) bytes, and in version 2
        with compressed content the original's digest."""
        lay = self.layout
        if len(tail) != lay.tail_len:
            raise ValueError(f"tail must be {lay.tail_len} bytes")
        if len(digest) != lay.trailer_len:
            raise ValueError(f"digest must be {lay.trailer_len} bytes")
        if self._c.chunk != lay.chunks:
            raise ValueError("finish() before every chunk was encoded")
        return self.keys.seg.encrypt(_Keys.nonce(lay.chunks + lay.first_chunk_segment, True),
                                     bytes(tail) + bytes(digest), self.keys.bind)


@dataclass(frozen=True)
class PrfHeader:
    bind: bytes
    key_id: bytes
    wrap_nonce: bytes
    wrapped: bytes
    layout: Layout
    file_id: bytes

    @classmethod
    def parse(cls, data: bytes) -> "PrfHeader":
        if len(data) < PRF_HEADER_LEN:
            if data[:4] not in (PRF_MAGIC, PRF_MAGIC[: len(data)]):
                raise FormatError("not an se2 private container (bad magic)")
            raise _truncated("private container", len(data), PRF_HEADER_LEN)
        magic, version, scheme, log2, flags, file_id, content_len, head_len = BIND.unpack(
            data[:BIND_LEN])
        if magic != PRF_MAGIC:
            raise FormatError("not an se2 private container (bad magic)")
        if version not in VERSIONS or scheme != SCHEME_ID:
            raise FormatError(f"private container version {version} scheme {scheme} is not "
                              f"supported by this build (reads versions 1 and 2): upgrade "
                              "dispersiond")
        if (not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2 or flags or head_len > MAX_HEAD
                or (version == 2 and any(file_id))):
            raise IntegrityError("private container header is malformed")
        o = BIND_LEN
        return cls(data[:BIND_LEN], data[o:o + 8], data[o + 8:o + 20],
                   data[o + 20:PRF_HEADER_LEN], Layout(log2, content_len, head_len, version),
                   file_id)

    def unwrap(self, master_key: bytes) -> bytes:
        kid, wrap = _master(master_key)
        if kid != self.key_id:
            raise WrongKey("the private container was protected with a different master key "
                           f"(container key id {self.key_id.hex()}, yours "
                           f"{kid.hex()}): use the key it was made with")
        try:
            return AESGCM(wrap).decrypt(self.wrap_nonce, self.wrapped, self.bind + self.key_id)
        except InvalidTag:
            raise IntegrityError("private container header failed authentication "
                                 "(altered or corrupt)") from None


def _truncated(what: str, got: int, want: int) -> TruncatedError:
    return TruncatedError(f"{what} is truncated: {got} bytes, expected at least {want}")


def rewrap(prf_header: bytes, old_key: bytes, new_key: bytes,
           wrap_nonce: bytes | None = None) -> bytes:
    """New first PRF_HEADER_LEN bytes of a container, wrapped under `new_key`.

    Only the wrapped secret changes; segments and public fragments stay as they are.
    """
    h = PrfHeader.parse(prf_header[:PRF_HEADER_LEN])
    secret = h.unwrap(old_key)
    nonce = wrap_nonce if wrap_nonce is not None else os.urandom(12)
    kid, wrap = _master(new_key)
    return h.bind + kid + nonce + AESGCM(wrap).encrypt(nonce, secret, h.bind + kid)


class Se2Decoder:
    """Streaming decoder, the mirror of Se2Encoder. Raises before releasing any bad chunk."""

    def __init__(self, master_key: bytes, prf_header: bytes, puf_header: bytes) -> None:
        check_key(master_key)
        self.header = h = PrfHeader.parse(prf_header)
        secret = h.unwrap(master_key)
        self.layout = h.layout
        self.meta: Meta | None = None  # version 2: set by open_meta
        self.file_id = h.file_id
        self.digest = b""  # version 2, compressed: the original's digest, set by finish
        self.keys = _Keys(secret, h.bind, h.layout.version)
        self._pair = self.keys.pair
        self._c = _Chunker(h.layout, self.keys)
        self._check_puf_header(puf_header)
        self.puf_header = puf_header

    def _check_puf_header(self, puf_header: bytes) -> None:
        if len(puf_header) < PUF_HEADER_LEN:
            raise _truncated("public fragment", len(puf_header), PUF_HEADER_LEN)
        if self.layout.version >= 2:
            self._check_puf_header_v2(puf_header[:PUF_HEADER_LEN])
            return
        magic, version, scheme, log2, flags, file_id, content_len = PUF_HEADER.unpack(
            puf_header[:PUF_HEADER_LEN])
        if magic != PUF_MAGIC:
            raise FormatError("not an se2 public fragment (bad magic)")
        if version != 1 or scheme != SCHEME_ID:
            raise FormatError(f"public fragment version {version} does not match its version 1 "
                              "private container")
        if file_id != self.header.file_id:
            raise FragmentMismatch(
                f"public fragment belongs to file {file_id.hex()}, the private container to "
                f"{self.header.file_id.hex()}: the fragments of two files were mixed up")
        if (log2, flags, content_len) != (self.layout.chunk_log2, 0, self.layout.content_len):
            raise IntegrityError("public fragment header does not match the private container")

    def _check_puf_header_v2(self, hdr: bytes) -> None:
        magic, version, scheme, log2, flags, pair = PUF_HEADER_V2.unpack(hdr)
        if magic != PUF_MAGIC:
            raise FormatError("not an se2 public fragment (bad magic)")
        if version != 2 or scheme != SCHEME_ID:
            raise FormatError(f"public fragment version {version} does not match its version 2 "
                              "private container")
        if not hmac.compare_digest(pair, self._pair):
            raise FragmentMismatch("the public fragment does not belong to this private "
                                   "container: the fragments of two files were mixed up (or "
                                   "its header was altered)")
        if (log2, flags) != (self.layout.chunk_log2, 0):
            raise IntegrityError("public fragment header does not match the private container")

    def open_head(self, seg0: bytes) -> bytes:
        return self._open(0, seg0, False, "format header")

    def open_meta(self, seg1: bytes) -> Meta:
        """Version 2: open the sealed metadata; the layout then knows the trailer."""
        self.meta = m = Meta.unpack(self._open(1, seg1, False, "file metadata"))
        if m.codec == 0 and m.plain_len != self.layout.content_len:
            raise IntegrityError("private container metadata does not match its header")
        self.file_id = m.file_id
        self.layout = dataclasses.replace(self.layout, trailer_len=m.trailer_len)
        self._c.layout = self.layout
        return m

    def _open(self, index: int, seg: bytes, last: bool, what: str) -> bytes:
        try:
            return self.keys.seg.decrypt(_Keys.nonce(index, last), seg, self.keys.bind)
        except InvalidTag:
            raise IntegrityError(f"private container segment {index} ({what}) failed "
                                 "authentication: the container was altered") from None

    def chunk_units(self) -> Iterator[int]:
        return self.layout.chunk_units()

    def decode_chunk(self, n: int, puf_piece, prf_seg, out: np.ndarray, *,
                     stream: bool = False, prefetch=()) -> None:
        """Rebuild n units (32n bytes) into `out` from one public piece and one segment.

        stream=True is for an output far larger than the CPU caches that is not read
        again soon (a whole-file decode): `out` is then written around the caches,
        and meanwhile the `prefetch` buffers (the next piece and segment, which the
        next call reads) are read into them.
        """
        c = self._c
        keys = self.keys
        seg = memoryview(prf_seg)
        try:
            keys.seg.decrypt_into(_Keys.nonce(c.chunk + self.layout.first_chunk_segment, False),
                                  seg, keys.bind, c.seg_v[: len(seg) - TAG])
        except InvalidTag:
            raise IntegrityError(f"private container segment "
                                 f"{c.chunk + self.layout.first_chunk_segment} (chunk {c.chunk}) "
                                 "failed authentication: the container was altered") from None
        pad = AESGCM(keys.pad_key(c.chunk, seg[4 * n: 4 * n + TAG]))
        try:
            pad.decrypt_into(_ZERO_NONCE, puf_piece, self.puf_header,
                             c.pub_v[: len(puf_piece) - TAG])
        except InvalidTag:
            raise IntegrityError(f"public fragment chunk {c.chunk} failed authentication: "
                                 "altered, reordered or from another file") from None
        native = _split.native
        if native is not None:
            native.merge(c.pub_v, c.seg_v, c.keystream(n), out, n, stream=stream,
                         prefetch=prefetch)
        else:
            merge_swap(c.pub, c.seg[: 4 * n].view(np.uint32), n, c.positions(n),
                       np.frombuffer(out, dtype=np.uint8), c.split.col)
        c.chunk += 1

    def finish(self, final_seg: bytes) -> bytes:
        """The content's tail, after checking every chunk was consumed (version 2 with
        compressed content: the sealed digest is then in `digest`)."""
        lay = self.layout
        if self._c.chunk != lay.chunks:
            raise ValueError("finish() before every chunk was decoded")
        if lay.version >= 2 and self.meta is None:
            raise ValueError("finish() before open_meta()")
        last = self._open(lay.chunks + lay.first_chunk_segment, final_seg, True, "tail")
        if len(last) != lay.tail_len + lay.trailer_len:
            raise IntegrityError("private container tail has the wrong length")
        self.digest = bytes(last[lay.tail_len:])
        return last[: lay.tail_len]
