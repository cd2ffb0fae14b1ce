"""The C allocator's policy for this process: large buffers go back to the system.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB),
so after the first pack or part buffer, later ones come from the heap and stay there,
fragmenting it between the small rows and records that a stream of small files leaves
alive. A fixed threshold keeps every block from 128 KiB up in its own mapping, unmapped
when freed: the daemon's peak through a 10,000-record burst fell from ~129 to ~122 MiB
(BENCHMARKS.md, "Peak memory of a burst"). Other C libraries are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
#: Blocks from this size up are mapped on their own (glibc's own starting value).
MMAP_THRESHOLD = 128 << 10


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold`; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1
