"""Selective-encryption codecs: se2 (the hardened default) and paper-v1 (Algorithm 1).

`encode_stream` / `decode_stream` move bytes between file-like objects in
bounded memory (one chunk of scratch); `encode` / `decode` are the in-memory
API for small inputs. The schemes themselves (se2.py, paper_v1.py) are pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import ExtendedError, TruncatedError
from . import paper_v1, se2

SCHEMES = ("se2", "paper-v1")
DEFAULT_SCHEME = "se2"
KEY_LENGTHS = {"se2": se2.KEY_LEN, "paper-v1": paper_v1.KEY_LEN}


@dataclass(frozen=True)
class Encoded:
    """What a caller must remember to decode: sizes and (se2) the pairing id."""

    scheme: str
    file_id: bytes
    puf_len: int
    prf_len: int


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def _read_exact(src: BinaryIO, buf, what: str) -> None:
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])
        if not n:
            raise TruncatedError(f"{what} ended after {got} of {len(view)} bytes")
        got += n


def _read(src: BinaryIO, n: int, what: str) -> bytes:
    buf = bytearray(n)
    _read_exact(src, buf, what)
    return bytes(buf)


def encode_stream(scheme: str, key: bytes, src: BinaryIO, size: int, puf_out: BinaryIO,
                  prf_out: BinaryIO, *, head_len: int = 0, file_id: bytes | None = None,
                  chunk_log2: int = se2.DEFAULT_CHUNK_LOG2) -> Encoded:
    """Encode exactly `size` bytes of `src`; the first `head_len` go whole into the PRF (se2)."""
    _check_scheme(scheme)
    if scheme == "se2":
        head = _read(src, head_len, "input")
        enc = se2.Se2Encoder(key, size - head_len, head, file_id=file_id,
                             chunk_log2=chunk_log2)
    else:
        if head_len:
            raise ValueError("paper-v1 keeps no format header; use head_len=0")
        enc = paper_v1.PaperV1Encoder(key, size)
    puf_len, prf_len = 0, 0

    def out(puf, prf) -> None:
        nonlocal puf_len, prf_len
        puf_out.write(puf)
        prf_out.write(prf)
        puf_len += len(puf)
        prf_len += len(prf)

    out(enc.puf_header, enc.prf_header)
    for n in enc.chunk_units():
        _read_exact(src, enc.work[: 32 * n], "input")
        out(*enc.encode_chunk(n))
    tail_len = enc.layout.tail_len if scheme == "se2" else enc.tail_len
    out(b"", enc.finish(_read(src, tail_len, "input")))
    if src.read(1):
        raise ValueError("input is longer than the size given: did it change while reading?")
    fid = enc.file_id if scheme == "se2" else b""
    return Encoded(scheme, fid, puf_len, prf_len)


def decode_stream(scheme: str, key: bytes, puf_in: BinaryIO, puf_len: int, prf_in: BinaryIO,
                  prf_len: int, out: BinaryIO) -> int:
    """Decode into `out`; returns the bytes written. Raises before writing a bad chunk.

    A failure can still come after earlier chunks were written: write to a
    temporary file and rename it into place only when this returns.
    """
    _check_scheme(scheme)
    written = 0
    if scheme == "se2":
        prf_head = _read(prf_in, min(prf_len, se2.PRF_HEADER_LEN), "private container")
        puf_head = _read(puf_in, min(puf_len, se2.PUF_HEADER_LEN), "public fragment")
        dec = se2.Se2Decoder(key, prf_head, puf_head)
        lay = dec.layout
        _check_len("public fragment", puf_len, lay.puf_len)
        _check_len("private container", prf_len, lay.prf_len)
        head = dec.open_head(_read(prf_in, lay.head_len + se2.TAG, "private container"))
        out.write(head)
        written += len(head)
        pub = bytearray(28 * lay.units_per_chunk + se2.TAG)
        res = np.empty(32 * min(lay.units_per_chunk, max(lay.units, 1)), dtype=np.uint8)
        for n in dec.chunk_units():
            piece = memoryview(pub)[: 28 * n + se2.TAG]
            _read_exact(puf_in, piece, "public fragment")
            seg = _read(prf_in, 4 * n + se2.TAG, "private container")
            dec.decode_chunk(n, piece, seg, res)
            out.write(res[: 32 * n])
            written += 32 * n
        tail = dec.finish(_read(prf_in, lay.tail_len + se2.TAG, "private container"))
    else:
        iv = _read(prf_in, 16, "private fragment")
        dec = paper_v1.PaperV1Decoder(key, puf_len, prf_len, iv)
        res = np.empty(32 * min(paper_v1.CHUNK_UNITS, max(dec.units, 1)), dtype=np.uint8)
        for n in dec.chunk_units():
            piece = _read(puf_in, 28 * n, "public fragment")
            dec.decode_chunk(n, piece, _read(prf_in, dec.prf_need(n), "private fragment"), res)
            out.write(res[: 32 * n])
            written += 32 * n
        tail = dec.finish(_read(prf_in, dec.prf_rest(), "private fragment"))
    out.write(tail)
    return written + len(tail)


def _check_len(what: str, got: int, want: int) -> None:
    if got < want:
        raise TruncatedError(f"{what} is truncated: {got} bytes, expected {want}")
    if got > want:
        raise ExtendedError(f"{what} has {got - want} unexpected bytes beyond its {want}")


def encode(scheme: str, key: bytes, data: bytes, *, head_len: int = 0,
           file_id: bytes | None = None,
           chunk_log2: int = se2.DEFAULT_CHUNK_LOG2) -> tuple[bytes, bytes]:
    """In-memory encode: returns (public fragment, private fragment)."""
    _check_scheme(scheme)
    if scheme == "paper-v1":
        import io

        puf, prf = io.BytesIO(), io.BytesIO()
        encode_stream(scheme, key, io.BytesIO(data), len(data), puf, prf)
        return puf.getvalue(), prf.getvalue()
    if not 0 <= head_len <= len(data):
        raise ValueError("head_len must be between 0 and the input length")
    lay = se2.Layout(chunk_log2, len(data) - head_len, head_len)
    puf = np.empty(lay.puf_len, dtype=np.uint8)
    prf = np.empty(lay.prf_len, dtype=np.uint8)
    se2_encode_into(key, data, puf, prf, head_len=head_len, file_id=file_id,
                    chunk_log2=chunk_log2)
    return puf.tobytes(), prf.tobytes()


# Content at least this large is encoded and decoded with se2's streaming paths: each
# chunk is built in cache-resident scratch and written out with non-temporal stores,
# overlapped with reading the next chunk. Such outputs cannot stay cached anyway, and a
# store that bypasses the cache does not first read the line from memory. Smaller
# outputs are faster written in place (measured: 8 MiB about even, 16 MiB+ streaming wins).
STREAM_MIN = 16 << 20


def se2_encode_into(key: bytes, data, puf: np.ndarray, prf: np.ndarray, *, head_len: int = 0,
                    file_id: bytes | None = None,
                    chunk_log2: int = se2.DEFAULT_CHUNK_LOG2) -> se2.Layout:
    """se2 encode into preallocated uint8 arrays sized by `se2.Layout` (no allocation per call)."""
    src = memoryview(data).cast("B")
    enc = se2.Se2Encoder(key, len(src) - head_len, bytes(src[:head_len]), file_id=file_id,
                         chunk_log2=chunk_log2)
    lay = enc.layout
    if len(puf) != lay.puf_len or len(prf) != lay.prf_len:
        raise ValueError("output buffers do not match the layout")
    p = _put(prf, 0, enc.prf_header)
    q = _put(puf, 0, enc.puf_header)
    end = head_len + 32 * lay.units
    enc.encode_body(src[head_len: end], memoryview(puf)[q:], memoryview(prf)[p:],
                    stream=lay.content_len >= STREAM_MIN)
    _put(prf, lay.prf_len - lay.tail_len - se2.TAG, enc.finish(bytes(src[end:])))
    return lay


def _put(dst: np.ndarray, at: int, data: bytes) -> int:
    dst[at: at + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return at + len(data)


def decode(scheme: str, key: bytes, puf: bytes, prf: bytes) -> bytes:
    """In-memory decode of both fragments; raises on any mismatch or tampering."""
    import io

    _check_scheme(scheme)
    if scheme == "paper-v1":
        out = io.BytesIO()
        decode_stream(scheme, key, io.BytesIO(puf), len(puf), io.BytesIO(prf), len(prf), out)
        return out.getvalue()
    dec = _se2_open(key, puf, prf)  # authenticates the sizes before we allocate by them
    res = np.empty(dec.layout.head_len + dec.layout.content_len, dtype=np.uint8)
    _se2_decode_with(dec, puf, prf, res)
    return res.tobytes()


def _se2_open(key: bytes, puf, prf) -> se2.Se2Decoder:
    pv, rv = memoryview(puf), memoryview(prf)
    dec = se2.Se2Decoder(key, bytes(rv[: se2.PRF_HEADER_LEN]), bytes(pv[: se2.PUF_HEADER_LEN]))
    _check_len("public fragment", len(pv), dec.layout.puf_len)
    _check_len("private container", len(rv), dec.layout.prf_len)
    return dec


def se2_decode_into(key: bytes, puf, prf, res: np.ndarray) -> None:
    """se2 decode into a preallocated uint8 array of exactly head_len + content_len bytes."""
    _se2_decode_with(_se2_open(key, puf, prf), puf, prf, res)


def _se2_decode_with(dec: se2.Se2Decoder, puf, prf, res: np.ndarray) -> None:
    pv, rv = memoryview(puf), memoryview(prf)
    lay = dec.layout
    if len(res) != lay.head_len + lay.content_len:
        raise ValueError("output buffer does not match the layout")
    p = se2.PRF_HEADER_LEN
    head = dec.open_head(rv[p: p + lay.head_len + se2.TAG])
    _put(res, 0, head)
    p += lay.head_len + se2.TAG
    q, o = se2.PUF_HEADER_LEN, lay.head_len
    out = memoryview(res)
    stream = lay.content_len >= STREAM_MIN
    u = lay.units_per_chunk
    for n in dec.chunk_units():
        q2, p2 = q + 28 * n + se2.TAG, p + 4 * n + se2.TAG
        nxt = (pv[q2: q2 + 28 * u + se2.TAG], rv[p2: p2 + 4 * u + se2.TAG]) if stream else ()
        dec.decode_chunk(n, pv[q: q2], rv[p: p2], out[o: o + 32 * n], stream=stream,
                         prefetch=nxt)
        q, p = q2, p2
        o += 32 * n
    _put(res, o, dec.finish(rv[p:]))
