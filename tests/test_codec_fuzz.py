"""Fuzzing the public-header and private-container parsers with structured mutations of
valid fragments (both versions, compressed or not): a mutation either leaves the bytes
as they were and decodes to the original, or is refused with a CodecError. Nothing else
(no other exception, no wrong output) is allowed.

Bounded in CI; DISPERSIOND_FUZZ_EXAMPLES=N runs N examples per test (e.g. 20000).
"""
from __future__ import annotations

import io
import os
import struct
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond import codec
from dispersiond.codec import se2
from dispersiond.errors import CodecError

K = bytes(range(32))
EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "300"))
COUNTS: Counter = Counter()


def _pairs() -> list[tuple[bytes, bytes, bytes]]:
    text = b"".join(b"OBX|%d|NM|8867-4^Heart rate^LN||%d|/min\r" % (i, 60 + i % 40)
                    for i in range(120))
    rnd = os.urandom(2500)
    out = []
    for data, kw in ((text, dict(compression="auto")), (rnd, {}), (text, dict(version=1)),
                     (b"", {}), (text[:31], dict(head_len=5))):
        puf, prf = codec.encode("se2", K, data, chunk_log2=10, **kw)
        out.append((data, puf, prf))
    return out


PAIRS = _pairs()

# Fields worth hitting, as (start, length) in each fragment: every header field and the
# segment boundaries, where length and offset arithmetic lives.
PUF_FIELDS = [(0, 4), (4, 1), (5, 1), (6, 1), (7, 1), (8, 16), (24, 8), (8, 24)]
PRF_FIELDS = [(0, 4), (4, 1), (5, 1), (6, 1), (7, 1), (8, 16), (24, 8), (32, 4), (36, 8),
              (44, 12), (56, 48), (104, 16), (120, 48)]
SPECIAL = [0, 1, 0x7F, 0x80, 0xFF]


@st.composite
def mutation(draw):
    i = draw(st.integers(0, len(PAIRS) - 1))
    which = draw(st.sampled_from(["puf", "prf"]))
    frag = bytearray(PAIRS[i][1] if which == "puf" else PAIRS[i][2])
    kind = draw(st.sampled_from(["field", "field-int", "bit", "truncate", "extend", "splice",
                                 "swap-blocks"]))
    fields = PUF_FIELDS if which == "puf" else PRF_FIELDS
    if kind == "field":
        start, n = draw(st.sampled_from(fields))
        v = draw(st.sampled_from(SPECIAL))
        frag[start: start + n] = bytes([v]) * len(frag[start: start + n])
    elif kind == "field-int":  # a plausible but wrong integer in a length-like field
        start, n = draw(st.sampled_from([f for f in fields if f[1] in (1, 4, 8)]))
        v = draw(st.integers(0, (1 << (8 * n)) - 1) | st.sampled_from([0, 1, len(frag), len(frag) + 1]))
        v %= 1 << (8 * n)
        frag[start: start + n] = v.to_bytes(n, "big")[: len(frag[start: start + n])]
    elif kind == "bit" and frag:
        pos = draw(st.integers(0, len(frag) - 1))
        frag[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        frag = frag[: draw(st.integers(0, max(0, len(frag) - 1)))]
    elif kind == "extend":
        frag += draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":  # bytes of another fragment at the same place
        j = draw(st.integers(0, len(PAIRS) - 1))
        other = PAIRS[j][1] if which == "puf" else PAIRS[j][2]
        start = draw(st.integers(0, max(0, min(len(frag), len(other)) - 1)))
        n = draw(st.integers(1, 64))
        frag[start: start + n] = other[start: start + n]
    elif kind == "swap-blocks" and len(frag) > 64:
        a = draw(st.integers(0, len(frag) - 33))
        b = draw(st.integers(0, len(frag) - 33))
        frag[a: a + 32], frag[b: b + 32] = frag[b: b + 32], frag[a: a + 32]
    return i, which, kind, bytes(frag)


def _check(i: int, which: str, kind: str, frag: bytes, stream: bool) -> None:
    data, puf, prf = PAIRS[i]
    args = (frag, prf) if which == "puf" else (puf, frag)
    unchanged = args == (puf, prf)
    try:
        if stream:
            out = io.BytesIO()
            codec.decode_stream("se2", K, io.BytesIO(args[0]), len(args[0]),
                                io.BytesIO(args[1]), len(args[1]), out)
            got = out.getvalue()
        else:
            got = codec.decode("se2", K, *args)
    except CodecError as exc:
        assert not unchanged, f"intact fragments refused: {exc}"
        COUNTS[f"refused:{type(exc).__name__}"] += 1
        return
    assert unchanged, f"{kind} mutation of the {which} accepted"
    assert got == data
    COUNTS["unchanged"] += 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(m=mutation())
def test_fuzz_in_memory_parsers(m):
    _check(*m, stream=False)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(m=mutation())
def test_fuzz_streaming_parsers(m):
    _check(*m, stream=True)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(hdr=st.binary(min_size=0, max_size=se2.PRF_HEADER_LEN + 8))
def test_fuzz_container_header_parser_on_random_bytes(hdr):
    # random headers, magic forced half of the time so the parse gets past it
    for h in (hdr, b"DSPR\x02\x02" + hdr[6:], b"DSPR\x01\x02" + hdr[6:]):
        try:
            se2.PrfHeader.parse(h)
        except CodecError:
            COUNTS["header refused"] += 1
        else:
            COUNTS["header parsed"] += 1
        try:
            se2.Meta.unpack(h[:se2.META_LEN])
        except CodecError:
            COUNTS["meta refused"] += 1


def test_fuzz_report():
    """Prints the counts (pytest -s); fails if the fuzzing above never ran a case."""
    print(f"\nfuzz: {EXAMPLES} examples per test; outcomes {dict(sorted(COUNTS.items()))}")
    assert sum(COUNTS.values()) >= EXAMPLES or not COUNTS


def test_struct_sizes_are_what_the_document_says():
    assert se2.PUF_HEADER_V2.size == se2.PUF_HEADER_LEN == 32
    assert se2.META.size == se2.META_LEN == 32
    assert struct.calcsize(">4sBBBB16sQI") == se2.BIND_LEN == 36
