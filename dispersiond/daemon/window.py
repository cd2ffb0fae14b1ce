"""The upload window: the daily hours during which uploads may run (local time)."""
from __future__ import annotations

import datetime as dt

Window = tuple[dt.time, dt.time]


def in_window(window: Window | None, now: dt.datetime) -> bool:
    """Is `now` (local time) inside the upload window? Windows may cross midnight."""
    if window is None:
        return True
    start, end = window
    t = now.time()
    if start == end:
        return True
    if start < end:
        return start <= t < end
    return t >= start or t < end


def window_opens(window: Window | None, now: dt.datetime) -> dt.datetime | None:
    """When the upload window next opens (None if it is open now or there is none)."""
    if window is None or in_window(window, now):
        return None
    opens = now.replace(hour=window[0].hour, minute=window[0].minute, second=0, microsecond=0)
    if opens <= now:
        opens += dt.timedelta(days=1)
    return opens
