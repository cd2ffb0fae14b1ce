"""Codec throughput against AES baselines, and peak memory of streaming encode.

All algorithms run in one process on the same random buffer with preallocated
outputs, so the ratios compare the algorithms, not the allocator.
"""
from __future__ import annotations

import io
import os
import resource
import statistics
import tempfile
import time
from typing import Callable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import codec, digests
from ..codec import se2
from ..fsutil import Discard

NAMES = ["aes-128-cbc", "aes-256-gcm", "se2-encode", "se2-decode", "paper-v1-encode",
         "paper-v1-decode"]
#: The hashes a file's digests can be made with (the daemon runs one over every byte twice).
DIGEST_NAMES = [f"digest-{alg}" for alg in digests.ALGORITHMS]


def _interleaved_mbps(plan: list[tuple[str, Callable[[], None], int]], size: int,
                      progress: Callable[[str], None]) -> dict[str, float]:
    """Median MB/s per algorithm; rounds interleave the algorithms so that the machine's
    drift (other load, frequency changes) hits every algorithm alike."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in plan}
    for name, fn, _ in plan:
        progress(f"{name} (warm-up)")
        fn()  # page in the outputs, build caches
    for r in range(max(n for _, _, n in plan)):
        for name, fn, n in plan:
            if r < n:
                progress(f"{name} (run {r + 1} of {n})")
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: size / statistics.median(ts) / 1e6 for name, ts in times.items()}


def codec_bench(size: int, runs: int = 5, paper_runs: int | None = None,
                progress: Callable[[str], None] = lambda name: None) -> dict[str, float]:
    """MB/s (10^6 bytes/s of plaintext) for each name in NAMES and DIGEST_NAMES."""
    # One numpy-allocated buffer (numpy asks Linux for huge pages on large arrays),
    # read by every algorithm.
    data = np.frombuffer(os.urandom(size), dtype=np.uint8).copy()
    k16, k32 = os.urandom(16), os.urandom(32)
    out = np.empty(size + 32, dtype=np.uint8)
    results: dict[str, float] = {}

    def cbc() -> None:
        Cipher(algorithms.AES(k16), modes.CBC(bytes(16))).encryptor().update_into(data, out)

    def gcm() -> None:
        enc = Cipher(algorithms.AES(k32), modes.GCM(os.urandom(12))).encryptor()
        enc.update_into(data, out)
        enc.finalize()

    lay = se2.Layout(se2.DEFAULT_CHUNK_LOG2, size, 0)
    puf = np.empty(lay.puf_len, dtype=np.uint8)
    prf = np.empty(lay.prf_len, dtype=np.uint8)
    back = np.empty(size, dtype=np.uint8)
    codec.se2_encode_into(k32, data, puf, prf)

    p_puf, p_prf = io.BytesIO(), io.BytesIO()
    codec.encode_stream("paper-v1", k16, io.BytesIO(data), size, p_puf, p_prf)
    p_puf_b, p_prf_b = p_puf.getvalue(), p_prf.getvalue()

    def p_enc() -> None:
        codec.encode_stream("paper-v1", k16, io.BytesIO(data), size, Discard(), Discard())

    def p_dec() -> None:
        codec.decode_stream("paper-v1", k16, io.BytesIO(p_puf_b), len(p_puf_b),
                            io.BytesIO(p_prf_b), len(p_prf_b), Discard())

    plan = [
        ("aes-128-cbc", cbc, runs),
        ("aes-256-gcm", gcm, runs),
        ("se2-encode", lambda: codec.se2_encode_into(k32, data, puf, prf), runs),
        ("se2-decode", lambda: codec.se2_decode_into(k32, puf, prf, back), runs),
        ("paper-v1-encode", p_enc, paper_runs or runs),
        ("paper-v1-decode", p_dec, paper_runs or runs),
        *((f"digest-{alg}", lambda alg=alg: digests.of(alg, data), runs)
          for alg in digests.ALGORITHMS),
    ]
    results.update(_interleaved_mbps(plan, size, progress))
    if not np.array_equal(back, data):
        raise AssertionError("se2 decode in the benchmark did not round-trip")
    return results


def stream_rss(size: int, scheme: str = "se2") -> dict[str, float]:
    """Encode a `size`-byte file on disk through the streaming API; report MB/s and peak RSS.

    Peak RSS is the process's ru_maxrss after the run (interpreter, numpy and
    the codec's scratch); page cache of the input file does not count.
    """
    key = os.urandom(codec.KEY_LENGTHS[scheme])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(prefix="dispersiond-bench-") as d:
        path = os.path.join(d, "input")
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
            f.write(block[: size % len(block)])
        with open(path, "rb", buffering=0) as src:
            t = time.perf_counter()
            codec.encode_stream(scheme, key, src, size, Discard(), Discard())
            elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"size_bytes": size, "mb_per_s": size / elapsed / 1e6,
            "peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024}
