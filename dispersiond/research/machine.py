"""The machine a figure was measured on, printed beside it: a number means little without
the CPU, core count and split kernel that produced it."""
from __future__ import annotations

import os
import platform

from ..codec.split import KERNEL


def describe() -> str:
    """CPU model, cores, Python version and the split kernel in use, on one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{KERNEL} split kernel")
