"""The restore of a large file as a pipeline: the download hands its pieces to the decoder
uncopied (`ObjectStream.view`), and the original is hashed and written behind the decoder
(`WriteBehind`). Bit-exact whatever the piece sizes; a tampered chunk still stops the
decode before the output is used; a failed write is reported, never swallowed."""
from __future__ import annotations

import errno
import io
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispersiond import codec, digests
from dispersiond.errors import IntegrityError, TruncatedError
from dispersiond.ops.streaming import ObjectStream
from dispersiond.ops.writebehind import WriteBehind
from dispersiond.placement import HashingWriter

KEY = bytes(range(32))


def stream_of(data: bytes, piece: int, cap: int = 1 << 20, fail: Exception | None = None):
    def fetch(sink):
        for i in range(0, len(data), piece):
            sink.write(data[i:i + piece])
        if fail is not None:
            raise fail

    return ObjectStream(fetch, cap=cap)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50_000), st.lists(st.integers(1, 70_000), min_size=1, max_size=40),
       st.integers(0, 1 << 16))
def test_views_reassemble_the_object_bit_exact(piece, asks, seed):
    data = os.urandom(200_000)
    s = stream_of(data, piece, cap=64 << 10)
    got = bytearray()
    scratch = bytearray(max(asks))
    try:
        i = 0
        while len(got) < len(data):
            n = asks[i % len(asks)]
            i += 1
            view = s.view(n, scratch)
            assert len(view) == min(n, len(data) - len(got))
            got += view
        assert len(s.view(10, scratch)) == 0  # the end
    finally:
        s.close()
    assert bytes(got) == data


def test_a_view_inside_one_piece_is_not_a_copy():
    data = os.urandom(1 << 20)
    s = stream_of(data, 1 << 20)
    scratch = bytearray(1000)
    try:
        view = s.view(1000, scratch)
        assert bytes(view) == data[:1000] and view.obj is not scratch
        assert bytes(s.view(1000, scratch)) == data[1000:2000]
    finally:
        s.close()


def test_a_view_still_raises_the_download_verdict_at_the_end():
    s = stream_of(b"a" * 5000, 1000, fail=IntegrityError("object does not match its digest"))
    scratch = bytearray(5000)
    try:
        assert bytes(s.view(5000, scratch)) == b"a" * 5000
        with pytest.raises(IntegrityError, match="does not match"):
            s.view(1, scratch)
    finally:
        s.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 100_000)), max_size=30),
       st.sampled_from(digests.ALGORITHMS), st.integers(1, 4))
def test_write_behind_writes_and_hashes_what_a_hashing_writer_would(ops, alg, depth):
    """Lent buffers are refilled as soon as they come back: the bytes written are still
    the ones given, in order, and so is the digest."""
    rnd = os.urandom(100_000)
    out, ref = io.BytesIO(), io.BytesIO()
    want = HashingWriter(ref, alg)
    scratch = bytearray(100_000)  # reused at once, as a decoder's buffer is
    with WriteBehind(out, alg, depth=depth) as w:
        for i, (lend, n) in enumerate(ops):
            data = rnd[i % 7:][:n]
            if lend:
                buf = w.take(max(n, 1))
                buf[:len(data)] = memoryview(data)
                w.give(buf, len(data))
            else:
                scratch[:len(data)] = data
                w.write(memoryview(scratch)[:len(data)])  # copied: it changes next round
            want.write(data)
        w.finish()
    assert out.getvalue() == ref.getvalue()
    assert (w.n, w.hexdigest()) == (want.n, want.hexdigest())


def test_a_failed_write_is_raised_not_swallowed():
    with open("/dev/full", "wb", buffering=0) as full:
        with pytest.raises(OSError) as exc:
            with WriteBehind(full, "blake3", depth=2) as w:
                for _ in range(50):  # the failure surfaces in take, give or finish
                    buf = w.take(1 << 16)
                    w.give(buf, 1 << 16)
                w.finish()
    assert exc.value.errno == errno.ENOSPC


def test_an_error_in_the_decoder_stops_the_writer_and_nothing_more_is_written():
    out = io.BytesIO()
    with pytest.raises(RuntimeError):
        with WriteBehind(out, "blake3") as w:
            w.write(b"first")
            w.finish()
            raise RuntimeError("decode failed")
    assert out.getvalue() == b"first"
    assert not any(t.name == "restore-write" for t in threading.enumerate())


@pytest.mark.parametrize("size", [0, 31, 1 << 20, (3 << 20) + 12345])
def test_a_pipelined_decode_is_bit_exact(size):
    data = os.urandom(size)
    puf, prf = codec.encode("se2", KEY, data, head_len=min(size, 100))
    s = stream_of(puf, 70_001)
    out = io.BytesIO()
    try:
        with WriteBehind(out, "blake3") as w:
            n = codec.decode_stream("se2", KEY, s, len(puf), io.BytesIO(prf), len(prf), w)
            w.finish()
    finally:
        s.close()
    assert out.getvalue() == data and n == w.n == size
    assert w.hexdigest() == digests.of("blake3", data)


@pytest.mark.parametrize("where", ["chunk", "last chunk"])
def test_a_tampered_chunk_stops_the_pipelined_decode(where):
    data = os.urandom((2 << 20) + 999)
    puf, prf = codec.encode("se2", KEY, data)
    bad = bytearray(puf)
    bad[len(bad) // 2 if where == "chunk" else len(bad) - 20] ^= 1
    s = stream_of(bytes(bad), 1 << 20)
    try:
        with pytest.raises(IntegrityError, match="public fragment chunk"):
            with WriteBehind(io.BytesIO(), "blake3") as w:
                codec.decode_stream("se2", KEY, s, len(puf), io.BytesIO(prf), len(prf), w)
    finally:
        s.close()


def test_a_truncated_object_is_reported_as_such():
    data = os.urandom(1 << 20)
    puf, prf = codec.encode("se2", KEY, data)
    s = stream_of(puf[:-5000], 65536)
    try:
        with pytest.raises(TruncatedError, match="public fragment ended"):
            with WriteBehind(io.BytesIO(), "blake3") as w:
                codec.decode_stream("se2", KEY, s, len(puf), io.BytesIO(prf), len(prf), w)
    finally:
        s.close()
