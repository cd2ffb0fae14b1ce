"""`dispersiond run`: the service, in the foreground (systemd `Type=notify`)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ..config import find_config, load_config
from ..errors import ConfigError
from ._common import add_config

#: sysexits EX_CONFIG: the unit's RestartPreventExitStatus= keeps a bad config from looping.
EXIT_CONFIG = 78


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the daemon in the foreground: watch the inbox, protect what lands",
        description="Watch the inbox (filesystem events plus a periodic rescan), claim each "
                    "file once it is stable, encode, upload, commit, back up the manifest and "
                    "apply the after-policy; retry failed stores with backoff; run the "
                    "schedules from the config. Speaks the systemd notify protocol when "
                    "$NOTIFY_SOCKET is set. SIGTERM finishes or checkpoints the steps in "
                    "flight and exits 0. Exit 78 means the configuration must be fixed.")
    add_config(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..allocator import return_large_blocks

    return_large_blocks()  # a service's memory over months, not a command's seconds
    # A stop request during start-up (config, key, imports) is honoured as soon as the
    # loop runs, instead of killing the process half-way.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    log = logging.getLogger("dispersiond")
    if log.level > logging.INFO or log.level == logging.NOTSET:
        log.setLevel(logging.INFO)  # a service logs its steps (by file id only)
    # Libraries' warnings (SDKs, watchdog) in the same format, so every line parses.
    root = logging.getLogger()
    root.handlers[:] = list(log.handlers)
    root.setLevel(logging.WARNING)
    try:
        cfg = load_config(find_config(getattr(args, "config", None)))
        from ..daemon import Daemon

        daemon = Daemon(cfg, stop=stop)
    except ConfigError as exc:
        # One line, so the journal holds it as one entry (the unit's SyslogLevel=err).
        first, *rest = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        detail = first + (" " + "; ".join(rest) if rest else "")
        print(f"dispersiond: configuration error, not starting: {detail}", file=sys.stderr)
        return EXIT_CONFIG
    return daemon.run()
