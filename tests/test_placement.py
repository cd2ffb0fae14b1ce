"""Placement: erasure coding of public fragments and padding of their sizes."""
from __future__ import annotations

import io
import itertools
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from dispersiond.placement import (HashingWriter, ShardWriter, decode_shards, padme,
                                   rebuild_shards, shard_length)


@given(st.integers(0, 1 << 40))
def test_padme_bounds(x):
    p = padme(x)
    assert p >= x
    assert p - x <= max(0, x * 0.12 + 1)
    assert padme(p) == p  # padded sizes are fixed points: they leak nothing more


def test_padme_reduces_distinct_sizes():
    sizes = {padme(x) for x in range(10_000, 20_000)}
    assert len(sizes) < 100


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), kn=st.sampled_from([(1, 1), (1, 2), (2, 3), (3, 5), (2, 4)]),
       block=st.sampled_from([16, 64, 1000]), cut=st.integers(0, 3000))
def test_any_k_shards_rebuild_the_fragment(data, kn, block, cut):
    k, n = kn
    outs = [HashingWriter(io.BytesIO(), "blake3") for _ in range(n)]
    w = ShardWriter(k, n, outs, block)
    w.write(data[:cut])
    w.write(data[cut:])
    w.close()
    assert {o.n for o in outs} == {shard_length(len(data), k, block)} or not data
    for sel in itertools.combinations(range(n), k):
        got = io.BytesIO()
        decode_shards(len(data), k, n, block, {i: io.BytesIO(outs[i].f.getvalue()) for i in sel}, got)
        assert got.getvalue() == data
    # a lost shard is rebuilt bit-exact from any k others
    for lost in range(n):
        others = [i for i in range(n) if i != lost][:k]
        if len(others) < k:
            continue
        new = HashingWriter(io.BytesIO(), "blake3")
        rebuild_shards(len(data), k, n, block, {i: io.BytesIO(outs[i].f.getvalue()) for i in others},
                       [lost], {lost: new})
        assert new.f.getvalue() == outs[lost].f.getvalue()


def test_no_single_erasure_shard_holds_the_whole_fragment():
    data = os.urandom(100_000)
    outs = [HashingWriter(io.BytesIO(), "blake3") for _ in range(3)]
    w = ShardWriter(2, 3, outs, 4096)
    w.write(data)
    w.close()
    assert all(o.n < 0.55 * len(data) for o in outs)
