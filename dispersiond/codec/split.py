"""Vectorised word split and merge: take one 32-bit word out of every 32-byte unit.

These kernels are the hot path of se2, so they avoid per-unit Python and
allocation: callers pass preallocated buffers, and all index arithmetic runs in
numpy over the whole chunk (measurements behind the choices: docs/FORMAT.md,
"Why this layout").

Layout used by se2 (the "swap" order): the private word j of a unit is taken
out and word 7 moves into its slot, so the public part is words 0..6 of the
unit after that swap. paper-v1 keeps the paper's order instead (`paper_order`).
"""
from __future__ import annotations

import numpy as np

UNIT = 32
WORDS = 8

# A 28-byte opaque item with a 32-byte stride copies as one memcpy per unit,
# about 3x faster here than a (N, 7) uint32 strided copy.
_V28 = np.dtype("V28")

try:  # the fused C kernel: one pass per chunk instead of five (same bytes)
    from . import _splitc as native
except ImportError:  # not built (no compiler): the numpy kernels below are used
    native = None

KERNEL = f"c ({native.KERNEL})" if native is not None else "numpy"


class SplitBuffers:
    """Reusable scratch for one chunk size; avoids page faults on every chunk."""

    def __init__(self, max_units: int) -> None:
        self.base8 = np.arange(max_units, dtype=np.intp) * WORDS
        self.idx = np.empty(max_units, dtype=np.intp)
        self.j = np.empty(max_units, dtype=np.uint8)
        self.col = np.empty(max_units, dtype=np.uint32)

    def positions(self, keystream: np.ndarray) -> np.ndarray:
        """Word index of each unit's private word: the low 3 bits of one keystream byte."""
        n = keystream.shape[0]
        j = self.j[:n]
        np.bitwise_and(keystream, 7, out=j)
        idx = self.idx[:n]
        np.add(self.base8[:n], j, out=idx)
        return idx


def _units(work: np.ndarray, n: int) -> np.ndarray:
    return work[: n * UNIT].view(np.uint32).reshape(n, WORDS)


def split_swap(work: np.ndarray, n: int, idx: np.ndarray, pub_out: np.ndarray,
               prv_out: np.ndarray) -> None:
    """Split n units of `work` (modified in place) into public and private words.

    work: uint8, at least 32n bytes; idx: flat word index of each private word
    (from SplitBuffers.positions); pub_out: uint8, 28n bytes; prv_out: uint32, n words.
    """
    units = _units(work, n)
    flat = units.reshape(-1)
    np.take(flat, idx, out=prv_out, mode="clip")
    # Word 7 into the private slot; for j == 7 this writes word 7 onto itself.
    flat[idx] = units[:, 7]
    src = np.ndarray(shape=(n,), dtype=_V28, buffer=work, strides=(UNIT,))
    np.copyto(pub_out[: n * 28].view(_V28), src)


def merge_swap(pub: np.ndarray, prv: np.ndarray, n: int, idx: np.ndarray,
               out: np.ndarray, col: np.ndarray) -> None:
    """Inverse of split_swap: rebuild n units into `out` (uint8, 32n bytes)."""
    units = _units(out, n)
    flat = units.reshape(-1)
    dst = np.ndarray(shape=(n,), dtype=_V28, buffer=out, strides=(UNIT,))
    np.copyto(dst, pub[: n * 28].view(_V28))
    units[:, 7] = prv
    # Slot j holds the original word 7 (or, for j == 7, the private word just written).
    c = col[:n]
    np.take(flat, idx, out=c, mode="clip")
    flat[idx] = prv
    units[:, 7] = c


def paper_index(j: np.ndarray) -> np.ndarray:
    """Flat indices of the 7 public words of each unit in the paper's order."""
    n = j.shape[0]
    k = np.arange(7, dtype=np.intp)
    return (np.arange(n, dtype=np.intp) * WORDS)[:, None] + k[None, :] + (k[None, :] >= j[:, None])
