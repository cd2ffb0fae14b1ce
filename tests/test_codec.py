"""Codec properties: exact round trips, streaming = in-memory, and se2's tamper evidence."""
from __future__ import annotations

import io
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond import codec
from dispersiond.codec import se2
from dispersiond.errors import (CodecError, ExtendedError, FormatError, FragmentMismatch,
                                IntegrityError, TruncatedError, WrongKey)

K32 = bytes(range(32))
K16 = bytes(range(16))
KEYS = {"se2": K32, "paper-v1": K16}


def stream_roundtrip(scheme: str, key: bytes, data: bytes, **kw) -> tuple[bytes, bytes, bytes]:
    puf, prf = io.BytesIO(), io.BytesIO()
    enc = codec.encode_stream(scheme, key, io.BytesIO(data), len(data), puf, prf, **kw)
    assert (enc.puf_len, enc.prf_len) == (len(puf.getvalue()), len(prf.getvalue()))
    out = io.BytesIO()
    n = codec.decode_stream(scheme, key, io.BytesIO(puf.getvalue()), enc.puf_len,
                            io.BytesIO(prf.getvalue()), enc.prf_len, out)
    assert n == len(data)
    return puf.getvalue(), prf.getvalue(), out.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=5000), key=st.binary(min_size=32, max_size=32),
       log2=st.integers(10, 12), head=st.integers(0, 40))
def test_se2_roundtrip_any_size(data, key, log2, head):
    head = min(head, len(data))
    puf, prf = codec.encode("se2", key, data, head_len=head, chunk_log2=log2)
    assert codec.decode("se2", key, puf, prf) == data
    lay = se2.Layout(log2, len(data) - head, head)
    assert (len(puf), len(prf)) == (lay.puf_len, lay.prf_len)
    # the streaming path reads what the in-memory path writes, and vice versa
    spuf, sprf, out = stream_roundtrip("se2", key, data, head_len=head, chunk_log2=log2)
    assert out == data
    assert codec.decode("se2", key, spuf, sprf) == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), key=st.binary(min_size=16, max_size=16))
def test_paper_v1_roundtrip_any_size(data, key):
    puf, prf = codec.encode("paper-v1", key, data)
    assert len(puf) == 28 * (len(data) // 32)
    assert codec.decode("paper-v1", key, puf, prf) == data
    assert stream_roundtrip("paper-v1", key, data)[2] == data


@pytest.mark.parametrize("scheme", codec.SCHEMES)
def test_zero_bytes(scheme):
    puf, prf = codec.encode(scheme, KEYS[scheme], b"")
    assert codec.decode(scheme, KEYS[scheme], puf, prf) == b""


def test_large_multi_chunk_stream_roundtrip():
    data = os.urandom(3 * (1 << se2.DEFAULT_CHUNK_LOG2) + 12345)
    puf, prf, out = stream_roundtrip("se2", K32, data)
    assert out == data
    # the fragment split is what the design says: 12.5 % private, 87.5 % public
    assert abs(len(prf) / len(data) - 0.125) < 0.001
    assert abs(len(puf) / len(data) - 0.875) < 0.001


def test_se2_is_randomised_per_version():
    data = b"same record" * 100
    a = codec.encode("se2", K32, data)
    b = codec.encode("se2", K32, data)
    assert a[0][32:] != b[0][32:] and a[1] != b[1]


def test_se2_public_fragment_hides_repeated_units():
    data = bytes(32) * 4096  # all zero: every unit the same
    puf, _ = codec.encode("se2", K32, data)
    body = puf[se2.PUF_HEADER_LEN:]
    pieces = {body[i:i + 28] for i in range(0, 28 * 4096, 28)}
    assert len(pieces) == 4096


# ---------------------------------------------------------------- tamper matrix



def _small_pair(log2: int = 10):
    data = os.urandom(2 * 1024 + 77)  # three chunks at chunk_log2=10, then a tail
    puf, prf = codec.encode("se2", K32, data, head_len=9, chunk_log2=log2)
    return data, puf, prf


def test_every_flipped_byte_is_detected():
    data, puf, prf = _small_pair()
    for which, frag in (("puf", puf), ("prf", prf)):
        for pos in range(len(frag)):
            bad = bytearray(frag)
            bad[pos] ^= 1 << (pos % 8)
            args = (bytes(bad), prf) if which == "puf" else (puf, bytes(bad))
            with pytest.raises(CodecError):
                codec.decode("se2", K32, *args)
            # never a silent success; spot-check the streaming path too
            if pos % 97 == 0:
                with pytest.raises(CodecError):
                    codec.decode_stream("se2", K32, io.BytesIO(args[0]), len(args[0]),
                                        io.BytesIO(args[1]), len(args[1]), io.BytesIO())


REGIONS = {
    # (fragment, offset function, expected error)
    "puf magic": ("puf", lambda p, r: 0, FormatError),
    "puf file id": ("puf", lambda p, r: 10, FragmentMismatch),
    "puf content length": ("puf", lambda p, r: 30, IntegrityError),
    "puf first piece": ("puf", lambda p, r: se2.PUF_HEADER_LEN + 5, IntegrityError),
    "puf first tag": ("puf", lambda p, r: se2.PUF_HEADER_LEN + 28 * 32 + 3, IntegrityError),
    "puf last piece": ("puf", lambda p, r: len(p) - 20, IntegrityError),
    "prf magic": ("prf", lambda p, r: 1, FormatError),
    "prf version": ("prf", lambda p, r: 4, FormatError),
    "prf binding header": ("prf", lambda p, r: 20, IntegrityError),
    "prf key id": ("prf", lambda p, r: 40, WrongKey),
    "prf wrap nonce": ("prf", lambda p, r: 50, IntegrityError),
    "prf wrapped secret": ("prf", lambda p, r: 80, IntegrityError),
    "prf head segment": ("prf", lambda p, r: se2.PRF_HEADER_LEN + 2, IntegrityError),
    "prf chunk segment": ("prf", lambda p, r: se2.PRF_HEADER_LEN + 9 + 16 + 7, IntegrityError),
    "prf final segment": ("prf", lambda p, r: len(r) - 3, IntegrityError),
}


@pytest.mark.parametrize("region", REGIONS)
def test_tamper_region_gives_specific_error(region):
    _, puf, prf = _small_pair()
    which, off, err = REGIONS[region]
    frag = bytearray(puf if which == "puf" else prf)
    frag[off(puf, prf)] ^= 0x20
    args = (bytes(frag), prf) if which == "puf" else (puf, bytes(frag))
    with pytest.raises(err):
        codec.decode("se2", K32, *args)


def test_every_truncation_and_extension_is_detected():
    data, puf, prf = _small_pair()
    for cut in range(0, len(puf), 7):
        with pytest.raises((TruncatedError, FormatError)):
            codec.decode("se2", K32, puf[:cut], prf)
    for cut in range(0, len(prf), 5):
        with pytest.raises((TruncatedError, FormatError)):
            codec.decode("se2", K32, puf, prf[:cut])
    with pytest.raises(ExtendedError):
        codec.decode("se2", K32, puf + b"\0", prf)
    with pytest.raises(ExtendedError):
        codec.decode("se2", K32, puf, prf + b"x")
    with pytest.raises(TruncatedError):  # stream shorter than its declared length
        codec.decode_stream("se2", K32, io.BytesIO(puf[:-1]), len(puf), io.BytesIO(prf),
                            len(prf), io.BytesIO())


def test_wrong_key_is_named():
    _, puf, prf = _small_pair()
    with pytest.raises(WrongKey, match="different master key"):
        codec.decode("se2", bytes(32), puf, prf)


def test_swapped_fragments_of_two_files():
    _, puf_a, prf_a = _small_pair()
    _, puf_b, prf_b = _small_pair()
    with pytest.raises(FragmentMismatch):
        codec.decode("se2", K32, puf_a, prf_b)
    # same file id but another version: caught by authentication
    fid = os.urandom(16)
    data = os.urandom(3000)
    p1, r1 = codec.encode("se2", K32, data, file_id=fid)
    p2, r2 = codec.encode("se2", K32, data, file_id=fid)
    with pytest.raises(IntegrityError):
        codec.decode("se2", K32, p1, r2)


def test_reordered_public_pieces_are_detected():
    data = os.urandom(4 * 1024)
    puf, prf = codec.encode("se2", K32, data, chunk_log2=10)
    h, piece = se2.PUF_HEADER_LEN, 28 * 32 + 16
    body = [puf[h + i * piece: h + (i + 1) * piece] for i in range(4)]
    swapped = puf[:h] + body[1] + body[0] + body[2] + body[3]
    with pytest.raises(IntegrityError, match="chunk 0"):
        codec.decode("se2", K32, swapped, prf)


def test_rewrap_changes_only_the_key_fields():
    data = os.urandom(5000)
    puf, prf = codec.encode("se2", K32, data)
    new = os.urandom(32)
    head = se2.rewrap(prf, K32, new)
    prf2 = head + prf[se2.PRF_HEADER_LEN:]
    assert codec.decode("se2", new, puf, prf2) == data
    assert prf2[:36] == prf[:36] and prf2[se2.PRF_HEADER_LEN:] == prf[se2.PRF_HEADER_LEN:]
    with pytest.raises(WrongKey):
        codec.decode("se2", K32, puf, prf2)


def _reference_hkdf(ikm: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


@settings(max_examples=200, deadline=None)
@given(ikm=st.binary(max_size=200), infos=st.lists(st.binary(max_size=100), max_size=5))
def test_key_schedule_is_rfc_5869_hkdf(ikm, infos):
    """se2's own HKDF (one extract per key, two hash compressions per label) gives the
    bytes of the library's HKDF-SHA256, for keys and labels of any length."""
    h = se2.Hkdf(ikm)
    for info in infos:
        assert h.derive(info) == _reference_hkdf(ikm, info) == se2._hkdf(ikm, info)


def test_every_derived_key_is_the_documented_hkdf():
    """The keys a container uses are those FORMAT.md 2.1 and 2.5 name (checked against
    the library's HKDF, not against the code's own), whatever the cache holds."""
    secret, keys = os.urandom(32), [os.urandom(32) for _ in range(3)]
    k = se2._Keys(secret, bytes(36), 2)
    assert k.pad == _reference_hkdf(secret, b"dispersiond se2 v1 pad")
    assert k.pair == _reference_hkdf(secret, b"dispersiond se2 v2 pair")[:24]
    assert se2.pair_tag(secret) == k.pair and se2._Keys(secret, bytes(36)).pair == b""
    zeros = bytes(64)
    pos = _reference_hkdf(secret, b"dispersiond se2 v1 positions")
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    assert k.pos.update(zeros) == Cipher(algorithms.AES(pos), modes.CTR(bytes(16))
                                         ).encryptor().update(zeros)
    sealed = k.seg.encrypt(bytes(12), b"x", b"")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    assert sealed == AESGCM(_reference_hkdf(secret, b"dispersiond se2 v1 container")).encrypt(
        bytes(12), b"x", b"")
    # the master key derivations, while keys alternate and a third pushes one out
    for mk in keys + keys[::-1] + [keys[0], keys[2], keys[0]]:
        assert se2.key_id(mk) == _reference_hkdf(mk, b"dispersiond se2 v1 key-id")[:8]
        assert se2._master(mk)[1] == _reference_hkdf(mk, b"dispersiond se2 v1 wrap")
    assert len(se2._MASTERS) == 2


def test_layout_and_meta_stay_frozen_values():
    """Their hand-written __init__ keeps what the dataclass gave: equality, hashing,
    replace, and no assignment."""
    import dataclasses

    lay = se2.Layout(12, 1000, 7, 2, 32)
    assert lay == se2.Layout(12, 1000, 7, version=2, trailer_len=32) and hash(lay) == hash(
        se2.Layout(chunk_log2=12, content_len=1000, head_len=7, version=2, trailer_len=32))
    assert lay != se2.Layout(12, 1000, 7, 2) and se2.Layout(12, 1000, 7).version == se2.VERSION
    assert dataclasses.replace(lay, trailer_len=0) == se2.Layout(12, 1000, 7, 2)
    m = se2.Meta(b"i" * 16, 1, 1, 5000)
    assert se2.Meta.unpack(m.pack()) == m and se2.Meta().pack() == bytes(se2.META_LEN)
    for obj, field in ((lay, "content_len"), (m, "plain_len")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, 1)


def test_containers_of_alternating_keys_each_open_with_their_own():
    """Kept master-key derivations never hand one key's wrap key to another's files."""
    a, b = os.urandom(32), os.urandom(32)
    pairs = [(k, codec.encode("se2", k, bytes([i]) * 100)) for i, k in enumerate([a, b, a, b])]
    for i, (k, (puf, prf)) in enumerate(pairs):
        assert codec.decode("se2", k, puf, prf) == bytes([i]) * 100
        with pytest.raises(WrongKey):
            codec.decode("se2", b if k is a else a, puf, prf)


def test_paper_v1_has_no_integrity_but_refuses_impossible_lengths():
    data = os.urandom(1000)
    puf, prf = codec.encode("paper-v1", K16, data)
    bad = bytearray(puf)
    bad[3] ^= 1
    assert codec.decode("paper-v1", K16, bytes(bad), prf) != data  # silently wrong: documented
    with pytest.raises(IntegrityError):
        codec.decode("paper-v1", K16, puf[:-1], prf)


@pytest.mark.parametrize("scheme,length", [("se2", 16), ("paper-v1", 32)])
def test_wrong_key_length_is_refused(scheme, length):
    with pytest.raises(ValueError, match="byte"):
        codec.encode(scheme, bytes(length), b"abc")


# ---------------------------------------------------------------- real files

def real_dicoms(min_size: int = 0) -> list[Path]:
    """The DICOM files pydicom ships in its wheel (its other test files need a download)."""
    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(f for f in root.rglob("*.dcm") if f.stat().st_size >= min_size)


def entropy(data: bytes) -> float:
    counts = Counter(data)
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def test_real_dicom_files_roundtrip_bit_exact():
    files = real_dicoms()
    assert len(files) >= 20
    for f in files[::3]:
        data = f.read_bytes()
        for head in (0, min(132, len(data))):
            puf, prf = codec.encode("se2", K32, data, head_len=head)
            assert codec.decode("se2", K32, puf, prf) == data, f.name
        assert stream_roundtrip("se2", K32, data)[2] == data


@pytest.mark.parametrize("scheme", codec.SCHEMES)
def test_public_fragment_of_real_files_looks_random(scheme):
    files = real_dicoms(64 * 1024)
    assert len(files) >= 5
    for f in files[:5]:
        data = f.read_bytes()
        puf, _ = codec.encode(scheme, KEYS[scheme], data)
        body = puf[se2.PUF_HEADER_LEN:] if scheme == "se2" else puf
        assert entropy(body) > 7.9, f.name
        assert entropy(data) < entropy(body)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4000), log2=st.integers(10, 11))
def test_numpy_and_c_kernels_give_the_same_bytes(data, log2):
    """The C kernel is optional; the numpy fallback must be byte-for-byte the same format."""
    from dispersiond.codec import split

    assert split.native is not None, "the C kernel was not built (setup.py ext)"
    fid = bytes(16)
    kw = dict(file_id=fid, chunk_log2=log2)
    secret, nonce = bytes(range(32)), bytes(12)
    outs = []
    saved = split.native
    try:
        for native in (saved, None):
            split.native = native
            enc = se2.Se2Encoder(K32, len(data), b"", secret=secret, wrap_nonce=nonce, **kw)
            puf, prf = bytearray(enc.puf_header), bytearray(enc.prf_header)
            off = 0
            for n in enc.chunk_units():
                p, s = enc.encode_chunk(n, src=data[off:off + 32 * n])
                puf += p
                prf += s
                off += 32 * n
            prf += enc.finish(data[off:])
            outs.append((bytes(puf), bytes(prf)))
            assert codec.decode("se2", K32, *outs[-1]) == data
    finally:
        split.native = saved
    assert outs[0] == outs[1]


# ---------------------------------------------------------------- C kernels

def _native():
    from dispersiond.codec import split

    assert split.native is not None, "the C kernel was not built (setup.py ext)"
    return split.native


SIZES = [0, 1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 255, 1001, 8191,
         8192, 8193]


def _split_ref(src: bytes, ks: bytes, n: int) -> tuple[bytes, bytes]:
    """The split as FORMAT.md words it, one unit at a time."""
    pub, prv = bytearray(), bytearray()
    for i in range(n):
        words = [src[32 * i + 4 * w: 32 * i + 4 * w + 4] for w in range(8)]
        j = ks[i] & 7
        prv += words[j]
        words[j] = words[7]
        pub += b"".join(words[:7])
    return bytes(pub), bytes(prv)


@pytest.mark.parametrize("n", SIZES)
def test_every_split_kernel_gives_the_same_bytes(n):
    """SIMD kernels (runtime CPU dispatch) against the scalar one and the reference, with
    guard bytes: no kernel may write past its outputs (pub may use 4 scratch bytes)."""
    c = _native()
    src, ks = os.urandom(32 * n), os.urandom(n)
    want = _split_ref(src, ks, n) if n <= 1001 else None
    outs = set()
    for kernel in c.kernels():
        pub, prv = bytearray(b"\xee" * (28 * n + 4 + 64)), bytearray(b"\xee" * (4 * n + 64))
        c.split(src, ks, pub, prv, n, kernel)
        assert pub[28 * n + 4:] == b"\xee" * 64 and prv[4 * n:] == b"\xee" * 64, kernel
        got = (bytes(pub[: 28 * n]), bytes(prv[: 4 * n]))
        assert want is None or got == want, kernel
        outs.add(got)
        out = bytearray(b"\xee" * (32 * n + 64))
        c.merge(pub, prv, ks, out, n, kernel)
        assert out[: 32 * n] == src and out[32 * n:] == b"\xee" * 64, kernel
    assert len(outs) == 1
    assert "scalar" in c.kernels() and c.KERNEL == c.kernels()[-1]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 700), skew=st.integers(0, 63), data=st.data())
def test_streaming_split_and_merge_give_the_same_bytes(n, skew, data):
    """split(flush=...) and merge(stream=True) write around the caches, at any alignment."""
    c = _native()
    src = data.draw(st.binary(min_size=32 * n, max_size=32 * n))
    ks = data.draw(st.binary(min_size=n, max_size=n))
    a, b = os.urandom(data.draw(st.integers(0, 3000))), os.urandom(data.draw(st.integers(0, 99)))
    for kernel in c.kernels():
        pub, prv = bytearray(28 * n + 4), bytearray(4 * n)
        da, db = bytearray(len(a) + skew + 8), bytearray(len(b) + 8)
        c.split(src, ks, pub, prv, n, kernel, [(memoryview(da)[skew:], a), (db, b)])
        assert (bytes(pub[: 28 * n]), bytes(prv)) == _split_ref(src, ks, n)
        assert da == bytes(skew) + a + bytes(8) and db == b + bytes(8)
        out = bytearray(32 * n + skew + 8)
        c.merge(pub, prv, ks, memoryview(out)[skew:], n, kernel=kernel, stream=True,
                prefetch=(a, b, src))
        assert out == bytes(skew) + src + bytes(8)
        dst = bytearray(len(src) + skew)
        c.stream_copy(memoryview(dst)[skew:], src)
        assert dst == bytes(skew) + src


def test_kernel_arguments_are_checked():
    c = _native()
    with pytest.raises(ValueError, match="unknown kernel"):
        c.split(bytes(32), bytes(1), bytearray(32), bytearray(4), 1, "sse9")
    with pytest.raises(ValueError, match="too small"):
        c.merge(bytes(32), bytes(4), bytes(1), bytearray(31), 1, stream=True)
    with pytest.raises(ValueError, match="at most"):
        c.merge(bytes(32), bytes(4), bytes(1), bytearray(32), 1, prefetch=[b""] * 5)
    with pytest.raises(ValueError, match="too small"):
        c.stream_copy(bytearray(8), bytes(9))
    with pytest.raises(ValueError, match="smaller"):
        c.split(bytes(32), bytes(1), bytearray(32), bytearray(4), 1, flush=[(bytearray(1), b"ab")])
    with pytest.raises(TypeError):
        c.split(bytes(32), bytes(1), bytearray(32), bytearray(4), 1, flush=[b"ab"])


def _encode_fixed(data: bytes, log2: int, head: int = 0,
                  how: str = "chunks") -> tuple[bytes, bytes]:
    """Deterministic se2 encode (fixed secret) by per-chunk calls or encode_body."""
    enc = se2.Se2Encoder(K32, len(data) - head, data[:head], file_id=bytes(16),
                         secret=bytes(range(32)), wrap_nonce=bytes(12), chunk_log2=log2)
    lay = enc.layout
    body = data[head: head + 32 * lay.units]
    puf = bytearray(lay.puf_len - se2.PUF_HEADER_LEN)
    prf = bytearray(4 * lay.units + se2.TAG * lay.chunks)
    if how == "chunks":
        q = p = off = 0
        for n in enc.chunk_units():
            a, b = enc.encode_chunk(n, src=body[off: off + 32 * n])
            puf[q: q + len(a)], prf[p: p + len(b)] = a, b
            q, p, off = q + len(a), p + len(b), off + 32 * n
    else:
        enc.encode_body(body, puf, prf, stream=how == "stream")
    tail = enc.finish(data[head + 32 * lay.units:])
    return enc.puf_header + bytes(puf), enc.prf_header + bytes(prf) + tail


class _ForcedKernel:
    """The C module with one kernel forced (to run whole encodes on each kernel)."""

    def __init__(self, native, kernel: str) -> None:
        self._native, self._kernel = native, kernel
        self.stream_copy, self.kernels = native.stream_copy, native.kernels

    def split(self, *args, **kw):
        return self._native.split(*args, kernel=self._kernel, **kw)

    def merge(self, *args, **kw):
        return self._native.merge(*args, kernel=self._kernel, **kw)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=9000), log2=st.integers(10, 12), head=st.integers(0, 40))
def test_streaming_encode_and_decode_give_the_same_bytes(data, log2, head):
    """The whole-file paths (pipelined split, non-temporal stores, prefetch) against the
    per-chunk path, on every kernel; and the streaming decode reads them back."""
    from dispersiond.codec import split

    head = min(head, len(data))
    ref = _encode_fixed(data, log2, head, "chunks")
    assert codec.decode("se2", K32, *ref) == data
    saved, saved_min = _native(), codec.STREAM_MIN
    try:
        codec.STREAM_MIN = 0
        for kernel in saved.kernels():
            split.native = _ForcedKernel(saved, kernel)
            for how in ("body", "stream"):
                assert _encode_fixed(data, log2, head, how) == ref, (kernel, how)
            assert codec.decode("se2", K32, *ref) == data
            res = np.empty(len(data), dtype=np.uint8)
            codec.se2_decode_into(K32, ref[0], ref[1], res)
            assert res.tobytes() == data
    finally:
        split.native, codec.STREAM_MIN = saved, saved_min


def test_streaming_encode_into_roundtrips_and_detects_tampering(monkeypatch):
    """se2_encode_into / se2_decode_into above STREAM_MIN take the streaming paths."""
    monkeypatch.setattr(codec, "STREAM_MIN", 0)
    data = os.urandom(5 * 1024 + 77)
    puf, prf = codec.encode("se2", K32, data, head_len=13, chunk_log2=10)
    assert codec.decode("se2", K32, puf, prf) == data
    monkeypatch.setattr(codec, "STREAM_MIN", 1 << 62)
    assert codec.decode("se2", K32, puf, prf) == data
    monkeypatch.setattr(codec, "STREAM_MIN", 0)
    for pos in (se2.PUF_HEADER_LEN + 3, len(puf) - 30, len(puf) - 1):
        bad = bytearray(puf)
        bad[pos] ^= 4
        with pytest.raises(IntegrityError, match="public fragment chunk"):
            codec.decode("se2", K32, bytes(bad), prf)
    bad = bytearray(prf)
    bad[se2.PRF_HEADER_LEN + 13 + 16 + 5] ^= 1
    with pytest.raises(IntegrityError, match="private container segment 1"):
        codec.decode("se2", K32, puf, bytes(bad))
