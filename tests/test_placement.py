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


def test_object_names_are_unique_across_threads_and_a_forked_child() -> None:
    """Names are cut from a per-thread pool of random bytes: no two threads, and no
    forked child and its parent, may ever cut the same one."""
    import os
    import re
    import threading

    from dispersiond.placement import RANDOM_POOL, new_object_name

    NAMES_AT_ONCE = RANDOM_POOL // 16

    seen: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        got = [new_object_name() for _ in range(3 * NAMES_AT_ONCE)]
        with lock:
            seen.extend(got)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen) == 12 * NAMES_AT_ONCE
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in seen)
    new_object_name()  # the pool is part used: a child must not go on with it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, "".join(new_object_name() for _ in range(4)).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 4096).decode()
    os.close(r)
    parent = "".join(new_object_name() for _ in range(4))
    assert len(child) == len(parent) == 128 and child != parent
