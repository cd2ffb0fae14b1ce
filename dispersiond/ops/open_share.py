"""The `open-share` operation: its room is the share package (dispersiond/share/opening.py,
which rebuilds through the one restorer in ops/restore.py, over the bundle's links)."""
from __future__ import annotations

from ..share import Opened, open_bundle

__all__ = ["Opened", "open_bundle"]
