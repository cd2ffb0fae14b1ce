"""The `share` operation: its room is the share package (dispersiond/share/issue.py makes a
bundle, share/grants.py the standing grants); this module only names it among the
operations."""
from __future__ import annotations

from ..share import DEFAULT_EXPIRES, ShareResult, apply_grants, create_bundle

__all__ = ["DEFAULT_EXPIRES", "ShareResult", "apply_grants", "create_bundle"]
