"""Codec properties: exact round trips, streaming = in-memory, and se2's tamper evidence."""
from __future__ import annotations

import io
import math
import os
from collections import Counter
from pathlib import Path

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
