"""Where fragments go and how they are cut: opaque object names, size padding,
and k-of-n erasure coding of public fragments (zfec, as Tahoe-LAFS uses).

Erasure layout (docs/FORMAT.md §4): the public fragment is cut into stripes of k
blocks of `block` bytes (the last stripe's blocks are shorter, zero-filled to a
common length); zfec turns each stripe into n blocks, and shard i is block i of
every stripe, concatenated. The code is systematic, so shards 0..k-1 are slices
of the (already encrypted) public fragment and shards k..n-1 are parity.
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, BinaryIO, Iterable

import zfec

from . import digests

if TYPE_CHECKING:
    from .tap import Pipe, Tap

DEFAULT_BLOCK = 1 << 18  # 256 KiB per block per shard


def new_object_name() -> str:
    """128 random bits: says nothing about the file, its type or its owner."""
    return public_random(16).hex()


#: Random bytes drawn from the OS at a time for `public_random`, and the most it serves
#: from them (larger asks go to the OS directly).
RANDOM_POOL, RANDOM_POOL_SERVES = 4096, 512


def public_random(n: int) -> bytes:
    """`n` random bytes for what is public anyway (object names, padding), never for a
    key or a nonce: cut from a per-thread pool of os.urandom output, dropped in a forked
    child so that two processes never share one. A small record takes two to four
    names and a padding; each os.urandom call lets the GIL go to another thread."""
    if n > RANDOM_POOL_SERVES:
        return os.urandom(n)
    pool = _pool
    if pool.at + n > len(pool.data):
        pool.data, pool.at = os.urandom(RANDOM_POOL), 0
    at = pool.at
    pool.at = at + n
    return pool.data[at:at + n]


class _RandomPool(threading.local):
    data = b""
    at = 0


_pool = _RandomPool()


def _forget_pool() -> None:
    global _pool
    _pool = _RandomPool()


os.register_at_fork(after_in_child=_forget_pool)


def padme(length: int) -> int:
    """Padmé padding (Nikitin et al., PURBs): at most 12 % overhead, leaks O(log log L) bits."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def padded(length: int, pad: str) -> int:
    return padme(length) if pad == "padme" else length


def stripe_blocks(length: int, k: int, block: int) -> list[int]:
    """Block size of each stripe for a public fragment of `length` bytes."""
    out = []
    left = length
    while left > 0:
        take = min(left, k * block)
        out.append(-(-take // k))
        left -= take
    return out


def shard_length(length: int, k: int, block: int) -> int:
    return sum(stripe_blocks(length, k, block))


class HashingWriter:
    """Writes through to a file while counting and hashing (by `alg`) what passes."""

    def __init__(self, f: BinaryIO, alg: str, tap: "Tap | None" = None) -> None:
        self.f = f
        self.h = digests.new(alg)
        self.n = 0
        self.tap = tap  # an upload reading behind us: told after each flushed write
        if tap is not None:
            tap.attach(f.fileno())

    def write(self, data) -> int:
        self.f.write(data)
        self.h.update(data)
        n = len(memoryview(data))
        self.n += n
        if self.tap is not None:
            self.f.flush()
            self.tap.advance(self.n)
        return n

    def pad_random(self, target: int) -> None:
        """Fill up to `target` bytes with random bytes (indistinguishable from ciphertext)."""
        while self.n < target:
            self.write(public_random(min(target - self.n, 1 << 20)))

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


class PipeWriter(HashingWriter):
    """Hashes and hands each write to uploads (Pipes): nothing is written locally."""

    def __init__(self, pipes: "list[Pipe]", alg: str) -> None:
        self.h = digests.new(alg)
        self.n = 0
        self.tap = None
        self.pipes = pipes

    def write(self, data) -> int:
        self.h.update(data)
        piece = bytes(data)  # one copy, whatever the number of uploads
        for p in self.pipes:
            p.put(piece)
        self.n += len(piece)
        return len(piece)

    def sync(self) -> None:
        """Every byte is written: the uploads may complete."""
        for p in self.pipes:
            p.finish()

    def close(self) -> None:
        pass


class ShardWriter:
    """A write-only stream that erasure-codes what it is given into n shard writers."""

    def __init__(self, k: int, n: int, outs: list[HashingWriter], block: int = DEFAULT_BLOCK) -> None:
        if len(outs) != n:
            raise ValueError("need one output per shard")
        self.k, self.n, self.block = k, n, block
        self.enc = zfec.Encoder(k, n)
        self.outs = outs
        self.buf = bytearray()
        self.total = 0

    def write(self, data) -> int:
        self.buf += data
        self.total += len(memoryview(data))
        stripe = self.k * self.block
        while len(self.buf) >= stripe:
            self._emit(bytes(self.buf[:stripe]), self.block)
            del self.buf[:stripe]
        return len(memoryview(data))

    def _emit(self, stripe: bytes, b: int) -> None:
        stripe = stripe.ljust(self.k * b, b"\0")
        blocks = [stripe[i * b:(i + 1) * b] for i in range(self.k)]
        for out, blk in zip(self.outs, self.enc.encode(blocks)):
            out.write(blk)

    def close(self) -> None:
        if self.buf:
            self._emit(bytes(self.buf), -(-len(self.buf) // self.k))
            self.buf.clear()


def decode_shards(length: int, k: int, n: int, block: int,
                  readers: dict[int, BinaryIO], out: BinaryIO) -> None:
    """Rebuild a public fragment of `length` bytes from any k shards (shard number -> stream)."""
    if len(readers) < k:
        raise ValueError(f"need {k} shards, have {len(readers)}")
    nums = sorted(readers)[:k]
    dec = zfec.Decoder(k, n)
    left = length
    for b in stripe_blocks(length, k, block):
        blocks = [_read_exact(readers[i], b) for i in nums]
        data = b"".join(dec.decode(blocks, nums))
        take = min(left, k * b)
        out.write(data[:take])
        left -= take


def rebuild_shards(length: int, k: int, n: int, block: int, readers: dict[int, BinaryIO],
                   wanted: Iterable[int], outs: dict[int, HashingWriter]) -> None:
    """Regenerate shards `wanted` from any k good shards (for repair)."""
    nums = sorted(readers)[:k]
    dec = zfec.Decoder(k, n)
    enc = zfec.Encoder(k, n)
    wanted = sorted(wanted)
    for b in stripe_blocks(length, k, block):
        primary = dec.decode([_read_exact(readers[i], b) for i in nums], nums)
        for num, blk in zip(wanted, enc.encode(primary, wanted)):
            outs[num].write(blk)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("shard shorter than its recorded length")
    return data
