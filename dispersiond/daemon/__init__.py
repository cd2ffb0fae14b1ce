"""The daemon, split by job: `service` (lifecycle and the main loop), `events` (the
messages between threads), `intake`, `encoder`, `uploader` (with `health`), `finisher`,
`verifier`, `status`; `paths` and `window` hold the checks and the clock arithmetic."""
from __future__ import annotations

from ..archive import Busy
from .health import StoreHealth
from .paths import Paths, check_paths
from .service import STOP_CANCEL, STOP_GRACE, Daemon
from .window import in_window, window_opens

__all__ = ["STOP_CANCEL", "STOP_GRACE", "Busy", "Daemon", "Paths", "StoreHealth", "check_paths",
           "in_window", "window_opens"]
