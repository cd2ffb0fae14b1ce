"""Moved: the `rekey` operation is dispersiond/ops/rekey.py. Kept so that callers not yet
moved import as before."""
from __future__ import annotations

from .ops.rekey import finish_retirements, rekey  # noqa: F401
