"""Compression before selective encryption: the policy, the quick trial, streaming zstd.

An encrypted fragment never compresses, so the only place to compress is on the device,
before the split. Compression runs as its own streaming pass into a spool (memory for a
small result, an anonymous encrypted file above SPOOL_MEMORY), so the exact encoded
length (and so every fragment's size) is known before the first fragment byte is
written: the uploads that start while a file is encoded, and the direct (unstaged)
uploads, need it. Memory stays bounded by zstd's window and SPOOL_MEMORY.
"""
from __future__ import annotations

import functools
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable

import zstandard
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .. import digests
from ..errors import IntegrityError

NONE, ZSTD = 0, 1  # codec ids in the private container (docs/FORMAT.md 2.4)
CODEC_NAMES = {NONE: "none", ZSTD: "zstd"}
DIGEST_IDS = {"blake3": 1, "sha256": 2}
DIGEST_NAMES = {v: k for k, v in DIGEST_IDS.items()}
DEFAULT_LEVEL = 3
MAX_LEVEL = 19  # 20..22 need windows of up to 128 MiB on the decoder; refused
MAX_WINDOW = 1 << 24  # what a decoder accepts: level 19 needs 8 MiB
TRIAL = 16 << 10  # bytes compressed per trial sample
FIRST_LOOK = 4 << 10  # of the first sample, tried alone first: incompressible data stops here
TRIAL_LEVEL = 1
PAYS = 0.90  # compress when a trial shrinks to at most this share of its input
BLOCK = 1 << 20  # read size of the streaming passes
SPOOL_MEMORY = 1 << 20  # compressed bytes a spool keeps in memory before it spills to a file

_POLICY = re.compile(r"off|auto|zstd(?::(\d+))?")

# Magic numbers of formats that are already compressed: no trial needed.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh", b"PK\x03\x04",
                     b"\x89PNG", b"\xff\xd8\xff", b"\x00\x00\x00\x0cjP  \r\n", b"\xff\x4f\xff\x51",
                     b"GIF8", b"RIFF", b"7z\xbc\xaf", b"OggS", b"fLaC")


@dataclass(frozen=True)
class Policy:
    """`off`, `auto` (compress when a trial says it pays) or `zstd:LEVEL` (always try)."""

    mode: str = "auto"
    level: int = DEFAULT_LEVEL

    @classmethod
    def parse(cls, text: str) -> "Policy":
        m = _POLICY.fullmatch(str(text).strip())
        if not m:
            raise ValueError(f"compression {text!r} is not one of off, auto, zstd, zstd:LEVEL")
        mode = m.group(0).split(":")[0]
        level = int(m.group(1)) if m.group(1) else DEFAULT_LEVEL
        if not 1 <= level <= MAX_LEVEL:
            raise ValueError(f"zstd level {level} is outside 1..{MAX_LEVEL}")
        return cls(mode, level)

    def __str__(self) -> str:
        return f"zstd:{self.level}" if self.mode == "zstd" else self.mode


OFF = Policy("off")
AUTO = Policy("auto")


@functools.lru_cache(maxsize=32)
def _parsed(text: str) -> Policy:
    return Policy.parse(text)


def policy_of(value: "Policy | str | None") -> Policy:
    """The policy a setting names (a config holds it as text: parsed once, not per file)."""
    if value is None:
        return OFF
    return value if isinstance(value, Policy) else _parsed(str(value))


def known_compressed(start: bytes) -> bool:
    """Does the content start like a format that is compressed already?"""
    return start.startswith(_COMPRESSED_MAGIC) or start[4:8] == b"ftyp"


_local = threading.local()


def _trial_compressor() -> zstandard.ZstdCompressor:
    """One per thread (a compressor is not thread-safe), kept: its first use allocates
    the context, which would cost more than the trial itself."""
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=TRIAL_LEVEL, write_content_size=False,
                                                   write_checksum=False)
    return c


def _first_look_refuses(first) -> bool:
    """Does zstd fail to shrink the first FIRST_LOOK bytes at all (it stores them raw)?"""
    return (len(first) >= FIRST_LOOK
            and len(_trial_compressor().compress(memoryview(first)[:FIRST_LOOK])) >= FIRST_LOOK)


def _samples_pay(samples: list[bytes]) -> bool:
    cctx = _trial_compressor()
    return all(len(cctx.compress(s)) <= PAYS * len(s) for s in samples if s)


def trial_pays(samples: list[bytes]) -> bool:
    """A fast zstd pass over a few samples: does each shrink enough to be worth it? The
    first that does not ends the trial. The first FIRST_LOOK bytes of the first sample
    go first, alone: content that zstd cannot shrink at all there (it stores the block
    raw) is taken as incompressible without trying the rest, so that random, encrypted
    or compressed content costs a 4 KiB trial instead of 16 KiB, a quarter of the time."""
    if not any(samples):
        return False
    if len(samples[0]) > FIRST_LOOK and _first_look_refuses(samples[0]):
        return False
    return _samples_pay(samples)


def read_samples(src: BinaryIO, start: int, length: int) -> list[bytes]:
    """The first TRIAL bytes of the content, and TRIAL from its middle when it is long
    (a text header before compressed data must not decide alone). Leaves src at start."""
    src.seek(start)
    out = [src.read(min(TRIAL, length))]
    if length > 4 * TRIAL:
        src.seek(start + length // 2)
        out.append(src.read(TRIAL))
    src.seek(start)
    return out


def should_compress(policy: Policy, skip: bool, samples: list[bytes]) -> bool:
    """`skip`: the format header says the content is compressed (e.g. a JPEG DICOM)."""
    if policy.mode == "off":
        return False
    if policy.mode == "zstd":
        return True
    return not skip and not (samples and known_compressed(samples[0])) and trial_pays(samples)


def pays(policy: Policy, src: BinaryIO, start: int, length: int) -> bool:
    """should_compress for the `length` content bytes of src from `start`, reading only
    what the decision needs: nothing unless the policy is auto, then the first FIRST_LOOK
    bytes, and the samples only if those shrink (so incompressible content costs one
    4 KiB read, not 16 KiB or 32). Leaves src at start if it read from it."""
    if policy.mode != "auto" or length <= 0:
        return policy.mode == "zstd"
    src.seek(start)
    first = src.read(min(FIRST_LOOK + 1, length))
    src.seek(start)
    if known_compressed(first):
        return False
    if len(first) <= FIRST_LOOK:  # the content is all here: the trial is this
        return _samples_pay([first])
    if _first_look_refuses(first):
        return False
    return _samples_pay(read_samples(src, start, length))


class Spool:
    """The compressed content until it is encoded. Up to `memory` bytes it stays in
    memory (the original is in memory then too, being read); past that it spills to an
    anonymous temporary file, encrypted under a key that lives only in this object: a
    crash leaves no readable copy of the record behind, only ciphertext in unlinked
    blocks. A small record so costs no file, no key setup and no cipher pass."""

    def __init__(self, directory: str | os.PathLike | None = None,
                 memory: int | None = None) -> None:
        self.directory = directory
        self.memory = SPOOL_MEMORY if memory is None else memory
        self.buf: bytearray | None = bytearray()  # None once spilled
        self.f = None
        self.n = 0
        self._at = 0  # read position in buf

    @property
    def spilled(self) -> bool:
        return self.buf is None

    def _spill(self) -> None:
        self.f = tempfile.TemporaryFile(dir=self.directory)
        key, nonce = os.urandom(32), os.urandom(16)
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._dec = Cipher(algorithms.AES(key), modes.CTR(nonce)).decryptor()
        buf, self.buf = self.buf, None
        self.f.write(self._enc.update(buf))
        buf[:] = bytes(len(buf))  # what can be cleared is

    def write(self, data) -> int:
        if self.buf is not None and len(self.buf) + len(data) > self.memory:
            self._spill()
        if self.buf is not None:
            self.buf += data
        else:
            self.f.write(self._enc.update(data))
        self.n += len(data)
        return len(data)

    def rewind(self) -> "Spool":
        if self.f is not None:
            self.f.flush()
            self.f.seek(0)
        self._at = 0
        return self

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        if self.buf is not None:
            k = min(len(view), len(self.buf) - self._at)
            view[:k] = memoryview(self.buf)[self._at: self._at + k]
            self._at += k
            return k
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if self.buf is not None:
            end = len(self.buf) if n < 0 else min(len(self.buf), self._at + n)
            data = bytes(self.buf[self._at: end])
            self._at = max(self._at, end)
            return data
        return self._dec.update(self.f.read(n))

    def close(self) -> None:
        if self.buf is not None:
            self.buf[:] = bytes(len(self.buf))
            self.buf = bytearray()
        if self.f is not None:
            self.f.close()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One per thread and level, kept (a new one allocates its context on first use)."""
    kept = getattr(_local, "by_level", None)
    if kept is None:
        kept = _local.by_level = {}
    c = kept.get(level)
    if c is None:
        c = kept[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return c


def compress_into(src: BinaryIO, length: int, out: Spool, level: int,
                  on_read: Callable[[memoryview], None]) -> int:
    """Compress exactly `length` bytes of src into the spool (streaming); returns the
    compressed length.

    `on_read` sees every input block (hashing, progress)."""
    cctx = _compressor(level)
    buf = bytearray(min(BLOCK, max(length, 1)))
    left = length
    with cctx.stream_writer(out, size=length, closefd=False) as w:
        while left:
            view = memoryview(buf)[: min(left, len(buf))]
            n = src.readinto(view)
            if not n:
                raise IntegrityError(f"input ended {left} bytes early while compressing: "
                                     "did the file change while it was read?")
            on_read(view[:n])
            w.write(view[:n])
            left -= n
    return out.n


class Inflater:
    """The decoder's sink for compressed content: decompresses what se2 releases into
    `out`, refuses output beyond the sealed length, and checks length and digest at
    the end. Used only on content se2 has already authenticated."""

    def __init__(self, out: BinaryIO, plain_len: int, digest_alg: str, head: bytes) -> None:
        self.out, self.want = out, plain_len
        self.h = digests.new(digest_alg)
        self.h.update(head)
        self.d = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompressobj()
        self.n = 0

    def write(self, data) -> None:
        if self.d.eof:
            if len(data):
                raise IntegrityError("compressed content has bytes after its end")
            return
        try:
            plain = self.d.decompress(bytes(data))
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"compressed content does not decompress ({exc})") from None
        if self.d.unused_data:
            raise IntegrityError("compressed content has bytes after its end")
        self.n += len(plain)
        if self.n > self.want:
            raise IntegrityError(f"content decompresses to more than its sealed length "
                                 f"{self.want}")
        self.h.update(plain)
        self.out.write(plain)

    def finish(self, digest: bytes) -> int:
        if not self.d.eof or self.n != self.want:
            raise IntegrityError(f"compressed content is incomplete: {self.n} of {self.want} "
                                 "bytes decompressed")
        if bytes.fromhex(self.h.hexdigest()) != digest:
            raise IntegrityError("decompressed content does not match the digest sealed in "
                                 "the private container")
        return self.n
