"""Byte statistics of public fragments: the paper's Table 2 and the data of its Fig. 4.

Pure computations, bytes in and numbers out; the `analyze` command reads files and
prints, plots.py draws. The paper judges protection by these figures; key_leak.py
shows why they are not enough (docs/SECURITY.md).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .. import codec

SCHEMES = ("paper-v1", "se2")

def byte_histogram(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Counts of each byte value 0..255 (int64, length 256)."""
    return np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256).astype(np.int64)


def entropy(hist: np.ndarray) -> float:
    """Shannon entropy of a byte histogram in bits per byte: 8.0 only for a flat histogram."""
    n = int(hist.sum())
    if n == 0:
        return 0.0
    p = hist[hist > 0] / n
    return float(-(p * np.log2(p)).sum())


def chi_square(hist: np.ndarray) -> float:
    """Pearson chi-square of a byte histogram against uniform (255 degrees of freedom).

    For uniform random bytes it is about 255 +- 23; structured data gives far more.
    """
    n = int(hist.sum())
    if n == 0:
        return 0.0
    expected = n / 256
    return float(((hist - expected) ** 2).sum() / expected)


def chi_square_p(stat: float, df: int = 255) -> float | None:
    """Upper-tail p-value, or None without scipy (an optional extra, never required)."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return None
    return float(chi2.sf(stat, df))


def random_entropy(n: int) -> float:
    """Expected entropy of n uniform random bytes (Miller-Madow bias, 255 / (2n ln 2)).

    A short random file cannot reach 8.0: compare a fragment with this, not with 8.
    """
    return 8.0 - 255 / (2 * n * math.log(2)) if n else 0.0


@dataclass
class ByteStats:
    size: int
    entropy: float
    chi2: float
    p_value: float | None
    random_entropy: float
    hist: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def of(cls, data) -> "ByteStats":
        h = byte_histogram(data)
        c = chi_square(h)
        n = int(h.sum())
        return cls(n, entropy(h), c, chi_square_p(c), random_entropy(n), h)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "hist"}
        if d["p_value"] is None:
            del d["p_value"]
        return d


@dataclass
class FileStats:
    """Table 2 row: the input and the public fragment of each scheme (fresh random keys)."""

    size: int
    input: ByteStats
    puf: dict[str, ByteStats]

    def to_dict(self) -> dict:
        return {"size": self.size, "input": self.input.to_dict(),
                "puf": {k: v.to_dict() for k, v in self.puf.items()}}


def new_key(scheme: str) -> bytes:
    return os.urandom(codec.KEY_LENGTHS[scheme])


def analyze_bytes(data: bytes, schemes: Sequence[str] = SCHEMES) -> FileStats:
    """Encode `data` (whole file as content, no header split) and measure every fragment."""
    puf = {s: ByteStats.of(codec.encode(s, new_key(s), data)[0]) for s in schemes}
    return FileStats(len(data), ByteStats.of(data), puf)
