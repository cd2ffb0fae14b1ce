"""Logging set-up: plain text for people, one JSON object per line for log shippers.

Log lines name files by id only; callers must never pass file names, paths or
key material at info level.
"""
from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger("dispersiond")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", {})
        if fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return base


def setup_logging(fmt: str = "text", verbose: int = 0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("dispersiond")
    root.handlers[:] = [handler]
    # Commands are quiet unless asked (-v: info, -vv: debug); the daemon logs at info.
    root.setLevel(logging.WARNING - 10 * min(verbose, 2))
    root.propagate = False


def event(level: int, msg: str, **fields) -> None:
    """Log a structured event; `fields` become JSON keys or key=value pairs."""
    log.log(level, msg, extra={"fields": fields})
