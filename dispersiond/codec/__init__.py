"""Selective-encryption codecs: se2 (the hardened default) and paper-v1 (Algorithm 1).

`encode_stream` / `decode_stream` move bytes between file-like objects in
bounded memory (one chunk of scratch); `encode` / `decode` are the in-memory
API for small inputs. The schemes themselves (se2.py, paper_v1.py) are pure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from .. import digests
from ..errors import ExtendedError, TruncatedError
from . import compress, paper_v1, se2
from .headers import head_says_compressed

SCHEMES = ("se2", "paper-v1")
DEFAULT_SCHEME = "se2"
KEY_LENGTHS = {"se2": se2.KEY_LEN, "paper-v1": paper_v1.KEY_LEN}


@dataclass(frozen=True)
class Encoded:
    """What a caller must remember to decode: sizes and (se2) the pairing id; and what
    the encode found out on the way (the original's digest, when asked for; the codec)."""

    scheme: str
    file_id: bytes
    puf_len: int
    prf_len: int
    digest: str | None = None
    codec: str = "none"
    content_len: int = 0  # bytes after the head that were split (compressed, if codec)


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


class _Watch:
    """Reads through, feeding every byte to a hasher and a progress callback."""

    def __init__(self, f: BinaryIO, hasher, progress: Callable[[int], None] | None) -> None:
        self.f, self.h, self.progress = f, hasher, progress

    def see(self, data) -> None:
        if self.h is not None:
            self.h.update(data)
        if self.progress and len(data):
            self.progress(len(data))

    def readinto(self, buf) -> int:
        n = self.f.readinto(buf)
        if n:
            self.see(memoryview(buf).cast("B")[:n])
        return n

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.see(data)
        return data


@dataclass
class Prepared:
    """An se2 encode whose sizes are fixed but whose fragments are not written yet."""

    layout: se2.Layout
    meta: se2.Meta
    head: bytes
    body: BinaryIO  # the content to split: the source after the head, or the spool
    digest_alg: str | None
    hasher: object | None  # still to be fed while the body is encoded (no compression)
    digest: bytes = b""  # known already (compressed: hashed in the compression pass)
    spool: compress.Spool | None = None
    file_id: bytes | None = None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def prepare(src: BinaryIO, size: int, *, head_len: int = 0, file_id: bytes | None = None,
            chunk_log2: int = se2.DEFAULT_CHUNK_LOG2,
            compression: "compress.Policy | str | None" = None, digest_alg: str | None = None,
            spool_dir=None, progress: Callable[[int], None] | None = None) -> Prepared:
    """Read the head, decide on compression, and compress (into an encrypted spool) if
    it pays: afterwards the layout, and so every fragment size, is known.

    `compression` None or "off" leaves the content as it is. With a digest_alg the
    original's digest is returned by `write` (one pass over the file serves both).
    A compressed encode needs a seekable src (the trial, and the fallback when the
    result would not be smaller)."""
    policy = compress.policy_of(compression)
    hasher = digests.new(digest_alg) if digest_alg else None
    watch = _Watch(src, hasher, progress)
    head = _read(watch, head_len, "input") if head_len else b""
    plain = size - head_len
    if policy.mode != "off" and plain > 0:
        skip = policy.mode == "auto" and head_says_compressed(head)
        if not skip and compress.pays(policy, src, head_len, plain):
            prep, digest = _compressed(src, watch, head, plain, policy, hasher, digest_alg,
                                       spool_dir, chunk_log2, file_id)
            if prep is not None:
                return prep
            src.seek(head_len)  # it did not shrink: encode the original, already hashed
            return Prepared(se2.Layout(chunk_log2, plain, head_len),
                            se2.Meta(file_id or bytes(16), 0, 0, plain), head,
                            _Watch(src, None, None), digest_alg, None, digest, file_id=file_id)
    return Prepared(se2.Layout(chunk_log2, plain, head_len),
                    se2.Meta(file_id or bytes(16), 0, 0, plain), head, watch, digest_alg,
                    hasher, file_id=file_id)


def _compressed(src, watch: _Watch, head: bytes, plain: int, policy: compress.Policy,
                hasher, digest_alg: str | None, spool_dir, chunk_log2: int,
                file_id: bytes | None) -> tuple[Prepared | None, bytes]:
    """Compress the content into a spool; (None, digest) if it did not shrink."""
    alg = digest_alg or digests.DEFAULT
    h = hasher if hasher is not None else digests.new(alg)
    if hasher is None:
        h.update(head)
    spool = compress.Spool(spool_dir)
    try:
        def seen(block) -> None:
            h.update(block)
            if watch.progress:
                watch.progress(len(block))

        n = compress.compress_into(src, plain, spool, policy.level, seen)
        if src.read(1):
            raise ValueError("input is longer than the size given: did it change while "
                             "reading?")
    except BaseException:
        spool.close()
        raise
    digest = h.digest()
    meta = se2.Meta(file_id or bytes(16), compress.ZSTD, compress.DIGEST_IDS[alg], plain)
    layout = se2.Layout(chunk_log2, n, len(head), 2, meta.trailer_len)
    if not _smaller(layout, se2.Layout(chunk_log2, plain, len(head))):
        spool.close()
        return None, digest
    return Prepared(layout, meta, head, spool.rewind(), digest_alg, None, digest, spool,
                    file_id), digest


def _smaller(compressed: se2.Layout, plain: se2.Layout) -> bool:
    """Are the two fragments of the compressed content smaller together than those of
    the original? A shorter frame is not enough: the container then also carries the
    digest (32 bytes), and a frame of a unit or two lands in the tail, which the
    container holds whole (the public fragment never grows)."""
    return (compressed.content_len < plain.content_len
            and compressed.puf_len + compressed.prf_len < plain.puf_len + plain.prf_len)


def write(prep: Prepared, key: bytes, puf_out: BinaryIO, prf_out: BinaryIO) -> Encoded:
    """Write both fragments of a prepared encode (streaming, one chunk of scratch)."""
    try:
        enc = se2.Se2Encoder(key, prep.layout.content_len, prep.head, file_id=prep.file_id,
                             chunk_log2=prep.layout.chunk_log2, meta=prep.meta)
        if enc.layout != prep.layout:
            raise ValueError("the encoder's layout differs from the prepared one")
        puf_out.write(enc.puf_header)
        prf_out.write(enc.prf_header)
        puf_len, prf_len = len(enc.puf_header), len(enc.prf_header)
        for n in enc.chunk_units():
            _read_exact(prep.body, enc.work[: 32 * n], "input")
            pub, seg = enc.encode_chunk(n)
            puf_out.write(pub)
            prf_out.write(seg)
            puf_len, prf_len = puf_len + len(pub), prf_len + len(seg)
        tail = _read(prep.body, enc.layout.tail_len, "input")
        if prep.body.read(1):
            raise ValueError("input is longer than the size given: did it change while "
                             "reading?")
        digest = prep.digest
        if prep.hasher is not None:
            digest = prep.hasher.digest()
        last = enc.finish(tail, digest if prep.meta.codec else b"")
        prf_out.write(last)
        prf_len += len(last)
    finally:
        prep.close()
    return Encoded("se2", enc.file_id, puf_len, prf_len, digest.hex() if prep.digest_alg else None,
                   compress.CODEC_NAMES[prep.meta.codec], prep.layout.content_len)


def encode_stream(scheme: str, key: bytes, src: BinaryIO, size: int, puf_out: BinaryIO,
                  prf_out: BinaryIO, *, head_len: int = 0, file_id: bytes | None = None,
                  chunk_log2: int = se2.DEFAULT_CHUNK_LOG2,
                  compression: "compress.Policy | str | None" = None,
                  digest_alg: str | None = None, spool_dir=None, version: int = se2.VERSION,
                  progress: Callable[[int], None] | None = None) -> Encoded:
    """Encode exactly `size` bytes of `src`; the first `head_len` go whole into the PRF (se2).

    se2 writes version 2 (docs/FORMAT.md), compressed first if `compression` says so;
    version=1 is for vectors and compatibility tests only."""
    _check_scheme(scheme)
    if scheme == "se2" and version == 2:
        se2.check_key(key)  # before anything is read
        prep = prepare(src, size, head_len=head_len, file_id=file_id, chunk_log2=chunk_log2,
                       compression=compression, digest_alg=digest_alg, spool_dir=spool_dir,
                       progress=progress)
        return write(prep, key, puf_out, prf_out)
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
    if scheme == "se2":
        return _se2_decode_stream(key, puf_in, puf_len, prf_in, prf_len, out)
    written = 0
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


class _Count:
    """The decoder's sink for uncompressed content: counts what it passes on."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.n = out, 0

    def write(self, data) -> None:
        self.out.write(data)
        self.n += len(data)

    def give(self, buf, n: int) -> None:
        self.out.give(buf, n)
        self.n += n

    def finish(self, _digest: bytes) -> int:
        return self.n


def _se2_decode_stream(key: bytes, puf_in: BinaryIO, puf_len: int, prf_in: BinaryIO,
                       prf_len: int, out: BinaryIO) -> int:
    prf_head = _read(prf_in, min(prf_len, se2.PRF_HEADER_LEN), "private container")
    puf_head = _read(puf_in, min(puf_len, se2.PUF_HEADER_LEN), "public fragment")
    dec = se2.Se2Decoder(key, prf_head, puf_head)
    _check_len("public fragment", puf_len, dec.layout.puf_len)
    head = dec.open_head(_read(prf_in, dec.layout.head_len + se2.TAG, "private container"))
    sink = _sink(dec, out, head, lambda: _read(prf_in, se2.META_LEN + se2.TAG,
                                               "private container"))
    lay = dec.layout
    _check_len("private container", prf_len, lay.prf_len)
    out.write(head)
    pub = bytearray(28 * lay.units_per_chunk + se2.TAG)
    size = 32 * min(lay.units_per_chunk, max(lay.units, 1))
    # An `out` that lends buffers (ops.writebehind) gets each chunk without a copy, and
    # hashes and writes it while the next one is decoded.
    lend = getattr(out, "take", None) if isinstance(sink, _Count) else None
    res = np.empty(size, dtype=np.uint8) if lend is None else None
    view = getattr(puf_in, "view", None)  # a source that can hand out its bytes uncopied
    for n in dec.chunk_units():
        piece = memoryview(pub)[: 28 * n + se2.TAG]
        if view is None:
            _read_exact(puf_in, piece, "public fragment")
        elif len(got := view(len(piece), pub)) < len(piece):
            raise TruncatedError(f"public fragment ended after {len(got)} of {len(piece)} "
                                 "bytes")
        else:
            piece = got
        seg = _read(prf_in, 4 * n + se2.TAG, "private container")
        if lend is not None:
            buf = lend(size)
            dec.decode_chunk(n, piece, seg, buf)
            sink.give(buf, 32 * n)
            continue
        dec.decode_chunk(n, piece, seg, res)
        sink.write(res[: 32 * n])
    sink.write(dec.finish(_read(prf_in, lay.tail_len + lay.trailer_len + se2.TAG,
                                "private container")))
    return len(head) + sink.finish(dec.digest)


def _sink(dec: se2.Se2Decoder, out: BinaryIO, head: bytes, read_meta: Callable[[], bytes]):
    """Where the decoded content goes: straight out, or through the decompressor."""
    if dec.layout.version < 2:
        return _Count(out)
    m = dec.open_meta(read_meta())
    if m.codec == compress.NONE:
        return _Count(out)
    return compress.Inflater(out, m.plain_len, compress.DIGEST_NAMES[m.digest_alg], head)


def _check_len(what: str, got: int, want: int) -> None:
    if got < want:
        raise TruncatedError(f"{what} is truncated: {got} bytes, expected {want}")
    if got > want:
        raise ExtendedError(f"{what} has {got - want} unexpected bytes beyond its {want}")


def encode(scheme: str, key: bytes, data: bytes, *, head_len: int = 0,
           file_id: bytes | None = None, chunk_log2: int = se2.DEFAULT_CHUNK_LOG2,
           compression: "compress.Policy | str | None" = None,
           version: int = se2.VERSION) -> tuple[bytes, bytes]:
    """In-memory encode: returns (public fragment, private fragment)."""
    import io

    _check_scheme(scheme)
    if scheme == "paper-v1":
        puf, prf = io.BytesIO(), io.BytesIO()
        encode_stream(scheme, key, io.BytesIO(data), len(data), puf, prf)
        return puf.getvalue(), prf.getvalue()
    if not 0 <= head_len <= len(data):
        raise ValueError("head_len must be between 0 and the input length")
    if compress.policy_of(compression).mode != "off" or version != se2.VERSION:
        puf, prf = io.BytesIO(), io.BytesIO()
        encode_stream(scheme, key, io.BytesIO(data), len(data), puf, prf, head_len=head_len,
                      file_id=file_id, chunk_log2=chunk_log2, compression=compression,
                      version=version)
        return puf.getvalue(), prf.getvalue()
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
    """se2 encode (version 2, uncompressed) into preallocated uint8 arrays sized by
    `se2.Layout` (no allocation per call)."""
    src = memoryview(data).cast("B")
    content = len(src) - head_len
    enc = se2.Se2Encoder(key, content, bytes(src[:head_len]), file_id=file_id,
                         chunk_log2=chunk_log2, meta=se2.Meta(plain_len=content))
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
    if dec.meta is not None and dec.meta.codec != compress.NONE:
        out = io.BytesIO()
        _se2_decode_compressed(dec, puf, prf, out)
        return out.getvalue()
    res = np.empty(dec.layout.head_len + dec.layout.content_len, dtype=np.uint8)
    _se2_decode_with(dec, puf, prf, res)
    return res.tobytes()


def _se2_open(key: bytes, puf, prf) -> se2.Se2Decoder:
    pv, rv = memoryview(puf), memoryview(prf)
    dec = se2.Se2Decoder(key, bytes(rv[: se2.PRF_HEADER_LEN]), bytes(pv[: se2.PUF_HEADER_LEN]))
    _check_len("public fragment", len(pv), dec.layout.puf_len)
    if dec.layout.version >= 2:  # segment 1, right after the head: sizes the trailer
        at = se2.PRF_HEADER_LEN + dec.layout.head_len + se2.TAG
        seg1 = bytes(rv[at: at + se2.META_LEN + se2.TAG])
        if len(seg1) < se2.META_LEN + se2.TAG:
            _check_len("private container", len(rv), at + se2.META_LEN + se2.TAG)
        dec.open_meta(seg1)
    _check_len("private container", len(rv), dec.layout.prf_len)
    return dec


def _se2_decode_compressed(dec: se2.Se2Decoder, puf, prf, out: BinaryIO) -> None:
    """Decode the compressed content, then inflate it (its size is sealed, so bounded)."""
    lay = dec.layout
    res = np.empty(lay.head_len + lay.content_len, dtype=np.uint8)
    _se2_decode_with(dec, puf, prf, res)
    head = res[: lay.head_len].tobytes()
    out.write(head)
    sink = compress.Inflater(out, dec.meta.plain_len,
                             compress.DIGEST_NAMES[dec.meta.digest_alg], head)
    sink.write(res[lay.head_len:])
    sink.finish(dec.digest)


def se2_decode_into(key: bytes, puf, prf, res: np.ndarray) -> None:
    """se2 decode into a preallocated uint8 array of exactly head_len + content_len bytes
    (the original's length: for compressed content, its uncompressed length)."""
    dec = _se2_open(key, puf, prf)
    if dec.meta is not None and dec.meta.codec != compress.NONE:
        import io

        out = io.BytesIO()
        _se2_decode_compressed(dec, puf, prf, out)
        if len(res) != len(out.getbuffer()):
            raise ValueError("output buffer does not match the original's length")
        res[:] = np.frombuffer(out.getbuffer(), dtype=np.uint8)
        return
    _se2_decode_with(dec, puf, prf, res)


def _se2_decode_with(dec: se2.Se2Decoder, puf, prf, res: np.ndarray) -> None:
    pv, rv = memoryview(puf), memoryview(prf)
    lay = dec.layout
    if len(res) != lay.head_len + lay.content_len:
        raise ValueError("output buffer does not match the layout")
    p = se2.PRF_HEADER_LEN
    head = dec.open_head(rv[p: p + lay.head_len + se2.TAG])
    _put(res, 0, head)
    p += lay.head_len + se2.TAG
    if lay.version >= 2:
        p += se2.META_LEN + se2.TAG  # opened by _se2_open
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
