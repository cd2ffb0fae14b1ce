"""The systemd notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op, so the daemon runs the
same way in a terminal, in tests and under `Type=notify`.
"""
from __future__ import annotations

import os
import socket
import time

#: TEST-ONLY: seconds after start-up at which the main loop stops for good, so its
#: watchdog pings stop (the system test proves systemd then kills and restarts it).
#: Nothing else reads it; never set it on a device.
HANG_ENV = "DISPERSIOND_TEST_HANG_AFTER"


class Notifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 to the service manager."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):  # abstract namespace
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
        # systemd wants pings at least every WATCHDOG_USEC; send them twice as often.
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self._last_ping = 0.0
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *lines: str) -> bool:
        """Send one message; failures never stop the daemon (the manager may be restarting)."""
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []), f"MAINPID={os.getpid()}")
        if status:
            self._last_status = status

    def status(self, text: str) -> None:
        """STATUS= shown by `systemctl status`; sent only when it changes."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self, force: bool = False) -> None:
        """Ping if due: call this from the main loop only, so a hung loop stops the pings."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if force or now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def watchdog_due_in(self) -> float | None:
        """Seconds until the next ping is due (None: no watchdog). The loop wakes by then,
        so a gap between pings stays near the interval, never near twice it."""
        if self.watchdog_interval is None:
            return None
        return max(0.0, self._last_ping + self.watchdog_interval - time.monotonic())

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def hang_if_asked(started: float, env: dict[str, str] | None = None) -> None:
    """TEST-ONLY: hang the calling (main) loop once $DISPERSIOND_TEST_HANG_AFTER seconds
    have passed since `started` (wall clock). Unset, as everywhere but that test: returns."""
    after = (os.environ if env is None else env).get(HANG_ENV)
    if not after:
        return
    try:
        due = started + float(after)
    except ValueError:
        return
    if time.time() < due:
        return
    import logging

    logging.getLogger("dispersiond").warning("main loop hanging on purpose (%s is set: a "
                                             "test of the watchdog)", HANG_ENV)
    while True:
        time.sleep(3600)
