"""Parsing of human sizes and durations used in config and on the command line."""
from __future__ import annotations

import re
from datetime import timedelta

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_MULT = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
         "gb": 10**9, "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20,
         "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}
_DUR = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.I)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str | int) -> int:
    """'64MiB' -> 67108864; '10MB' -> 10000000; plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _MULT:
        raise ValueError(f"not a size: {text!r} (examples: 512KiB, 64MiB, 1GiB, 1000000)")
    return int(float(m.group(1)) * _MULT[(m.group(2) or "").lower()])


def parse_duration(text: str | int | float) -> timedelta:
    """'72h', '30m', '1d12h', '90s' or plain seconds."""
    if isinstance(text, (int, float)):
        return timedelta(seconds=text)
    s = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return timedelta(seconds=float(s))
    parts = _DUR.findall(s)
    if not parts or "".join(a + b for a, b in parts) != re.sub(r"\s+", "", s):
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 72h, 7d)")
    return timedelta(seconds=sum(float(n) * _SECONDS[u.lower()] for n, u in parts))


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
