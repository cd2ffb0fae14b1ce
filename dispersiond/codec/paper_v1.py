"""paper-v1: Algorithm 1 of Qiu et al. exactly as pinned in docs/FORMAT.md.

For reproduction, benchmarks and interop only. It has no integrity protection
and falls to a leaked key on low-entropy data (docs/SECURITY.md); se2 is the default.
"""
from __future__ import annotations

import hashlib
import os
import struct
from typing import Iterator

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from ..errors import IntegrityError, TruncatedError
from .split import UNIT, WORDS, paper_index

KEY_LEN = 16
CHUNK_UNITS = 1 << 15  # 1 MiB of content per step; only memory use depends on it
_MSG = struct.Struct("28s")


def _keystream(key: bytes):
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise ValueError(f"paper-v1 needs a raw {KEY_LEN}-byte key")


def _chunks(units: int) -> Iterator[int]:
    while units > 0:
        n = min(units, CHUNK_UNITS)
        yield n
        units -= n


class _Pads:
    """H_i = SHA-256(w_j || K || uint64_be(i)), one call per unit (the scheme's cost)."""

    def __init__(self, key: bytes) -> None:
        self.key = np.frombuffer(key, dtype=np.uint8)
        self.ctr = _keystream(key)
        self.next_unit = 0

    def positions(self, n: int) -> np.ndarray:
        return np.frombuffer(self.ctr.update(bytes(n)), dtype=np.uint8) & 7

    def pads(self, prv: np.ndarray) -> np.ndarray:
        n = prv.shape[0]
        msg = np.empty((n, 28), dtype=np.uint8)
        msg[:, 0:4] = prv.view(np.uint8).reshape(n, 4)
        msg[:, 4:20] = self.key
        idx = np.arange(self.next_unit, self.next_unit + n, dtype=">u8")
        msg[:, 20:28] = idx.view(np.uint8).reshape(n, 8)
        self.next_unit += n
        sha = hashlib.sha256
        h = b"".join([sha(m).digest() for (m,) in _MSG.iter_unpack(msg.tobytes())])
        return np.frombuffer(h, dtype=np.uint8).reshape(n, 32)[:, :28]


class PaperV1Encoder:
    """Streaming encoder with the same shape as se2's (see Se2Encoder)."""

    def __init__(self, key: bytes, content_len: int, *, iv: bytes | None = None) -> None:
        _check_key(key)
        self.units = content_len // UNIT
        self.tail_len = content_len - self.units * UNIT
        iv = iv if iv is not None else os.urandom(16)
        self._pads = _Pads(key)
        self._cbc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._padder = PKCS7(128).padder()
        self.work = np.empty(min(self.units, CHUNK_UNITS) * UNIT, dtype=np.uint8)
        self.puf_header = b""
        self.prf_header = iv

    def chunk_units(self) -> Iterator[int]:
        return _chunks(self.units)

    def encode_chunk(self, n: int, puf_out: np.ndarray | None = None) -> tuple[memoryview, bytes]:
        words = self.work[: n * UNIT].view(np.uint32)
        j = self._pads.positions(n)
        prv = np.take(words, np.arange(n, dtype=np.intp) * WORDS + j)
        pub = np.take(words, paper_index(j)).view(np.uint8).reshape(n, 28)
        np.bitwise_xor(pub, self._pads.pads(prv), out=pub)
        if puf_out is not None:
            puf_out[: 28 * n] = pub.reshape(-1)
            pub = puf_out[: 28 * n]
        return memoryview(pub.reshape(-1)), self._cbc.update(self._padder.update(prv.tobytes()))

    def finish(self, tail: bytes) -> bytes:
        if len(tail) != self.tail_len:
            raise ValueError(f"tail must be {self.tail_len} bytes")
        last = self._padder.update(tail) + self._padder.finalize()
        return self._cbc.update(last) + self._cbc.finalize()


def prf_len(content_len: int) -> int:
    """Length of the private fragment: IV plus the padded private words and tail."""
    units = content_len // UNIT
    plain = 4 * units + content_len - units * UNIT
    return 16 + (plain // 16 + 1) * 16


class PaperV1Decoder:
    """Streaming decoder. The unit count comes from the public fragment's length."""

    def __init__(self, key: bytes, puf_len: int, prf_len: int, iv: bytes) -> None:
        _check_key(key)
        if puf_len % 28:
            raise IntegrityError(f"paper-v1 public fragment length {puf_len} is not a multiple of 28")
        if prf_len < 32 or (prf_len - 16) % 16:
            raise IntegrityError(f"paper-v1 private fragment length {prf_len} is impossible")
        self.units = puf_len // 28
        self._ct_len = prf_len - 16
        self._pads = _Pads(key)
        self._cbc = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._plain = bytearray()
        self._fed = 0
        self._done_units = 0

    def chunk_units(self) -> Iterator[int]:
        return _chunks(self.units)

    def prf_need(self, n: int) -> int:
        """How many more private-fragment bytes to pass with the next chunk of n units."""
        want = 4 * (self._done_units + n)
        want = min(-(-want // 16) * 16, self._ct_len)
        return max(0, want - self._fed)

    def decode_chunk(self, n: int, puf_piece, prf_piece: bytes, out: np.ndarray) -> None:
        self._fed += len(prf_piece)
        self._plain += self._cbc.update(prf_piece)
        if len(self._plain) < 4 * n:
            raise TruncatedError("paper-v1 private fragment is shorter than its public fragment needs")
        prv = np.frombuffer(bytes(self._plain[: 4 * n]), dtype=np.uint32)
        del self._plain[: 4 * n]
        j = self._pads.positions(n)
        pub = np.frombuffer(puf_piece, dtype=np.uint8, count=28 * n).reshape(n, 28)
        pub = np.bitwise_xor(pub, self._pads.pads(prv))
        words = out[: n * UNIT].view(np.uint32)
        words[np.arange(n, dtype=np.intp) * WORDS + j] = prv
        words[paper_index(j)] = pub.view(np.uint32)
        self._done_units += n

    def prf_rest(self) -> int:
        return self._ct_len - self._fed

    def finish(self, prf_rest: bytes) -> bytes:
        """The content's tail, from the last private-fragment bytes."""
        self._plain += self._cbc.update(prf_rest) + self._cbc.finalize()
        pad = self._plain[-1] if self._plain else 0
        if not 1 <= pad <= 16 or self._plain[-pad:] != bytes([pad]) * pad:
            raise IntegrityError("paper-v1 private fragment has bad padding: wrong key or "
                                 "corrupt fragment (paper-v1 cannot tell which)")
        tail = bytes(self._plain[:-pad])
        if len(tail) >= UNIT:
            raise IntegrityError("paper-v1 private fragment is longer than its public fragment needs")
        return tail
