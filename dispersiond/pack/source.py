"""Where pack bytes come from: the whole pack in memory, or a ranged reader
(offset, length) -> bytes supplied by the imperative shell (a store's ranged GET)."""
from __future__ import annotations

from typing import Callable, Union

from ..errors import ExtendedError, TruncatedError

RangeReader = Callable[[int, int], bytes]
Source = Union[bytes, bytearray, memoryview, RangeReader]


def read_range(source: Source, offset: int, length: int, where: str) -> bytes:
    """Exactly `length` bytes at `offset`, or a TruncatedError naming where."""
    if callable(source):
        data = bytes(source(offset, length))
    else:
        data = bytes(memoryview(source)[offset:offset + length])
    if len(data) < length:
        raise TruncatedError(f"{where}: got {len(data)} of {length} bytes at offset {offset}: "
                             "the pack is truncated; run repair")
    if len(data) > length:
        raise ExtendedError(f"{where}: the range reader returned {len(data)} bytes for "
                            f"{length}: fix the store's ranged read")
    return data


def check_size(source: Source, size: int, where: str) -> None:
    """A whole pack in memory must be exactly its recorded size (a ranged reader cannot tell)."""
    if callable(source):
        return
    got = len(memoryview(source))
    if got < size:
        raise TruncatedError(f"{where}: {got} bytes, the manifest says {size}: the pack is "
                             "truncated; run repair")
    if got > size:
        raise ExtendedError(f"{where}: {got} bytes, the manifest says {size}: the pack was "
                            "extended; run repair")
