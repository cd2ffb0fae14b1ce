"""Logging set-up: plain text for people, one JSON object per line for log shippers,
and journald's native protocol under systemd.

Log lines name files by id only; callers must never pass file names, paths or
key material at info level.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from typing import Any, TextIO

#: Where journald takes native-protocol datagrams (systemd.journal-fields(7)).
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: logging level -> syslog priority, which journald filters on (`journalctl -p warning`).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
# Fields journald or its tools give a meaning of their own: ours never take their names.
_RESERVED = {"MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
             "ERRNO", "INVOCATION_ID", "USER_INVOCATION_ID", "SYSLOG_FACILITY",
             "SYSLOG_IDENTIFIER", "SYSLOG_PID", "SYSLOG_TIMESTAMP", "SYSLOG_RAW",
             "DOCUMENTATION", "TID", "UNIT", "USER_UNIT", "COREDUMP_UNIT", "OBJECT_PID"}

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


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between the named ones round down)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def field_name(key: str) -> str:
    """A journal field name for an event key: file_id -> FILE_ID."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_") or "FIELD"
    if name[0].isdigit() or name in _RESERVED:
        name = "DISPERSIOND_" + name
    return name[:64]


def one_line(text: str) -> str:
    return " | ".join(part.strip() for part in str(text).splitlines() if part.strip())


def journal_fields(record: logging.LogRecord, identifier: str = "dispersiond") -> dict[str, str]:
    """The journal entry of one record: a one-line MESSAGE, its PRIORITY, and each event
    field (file_id, store, ...) as a field of its own, so `journalctl FILE_ID=...` finds
    every step of one file."""
    fields: dict[str, Any] = getattr(record, "fields", {})
    message = record.getMessage()
    if fields:
        message += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    out = {"PRIORITY": str(priority(record.levelno)), "SYSLOG_IDENTIFIER": identifier,
           "LOGGER": record.name}
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        message += f" ({type(exc).__name__}: {exc})"
        out["EXCEPTION"] = logging.Formatter().formatException(record.exc_info)
    out["MESSAGE"] = one_line(message)
    for key, value in fields.items():
        if value is not None:
            out[field_name(key)] = str(value)
    return out


def encode_journal(fields: dict[str, str]) -> bytes:
    """journald's native datagram: KEY=value lines; a value with a newline goes as KEY,
    its length (64-bit little-endian) and its bytes."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald; if the socket cannot take it, writes the one-line
    message with a `<priority>` prefix to stderr, which journald parses too."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None) -> None:
        super().__init__()
        self.path, self.fallback = path, fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = journal_fields(record)
            try:
                self.sock.sendto(encode_journal(fields), self.path)
            except OSError:
                out = self.fallback or sys.stderr
                out.write(f"<{fields['PRIORITY']}>{fields['MESSAGE']}\n")
                out.flush()
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def under_journal(env: dict[str, str] | None = None) -> bool:
    """Is stderr connected to journald? systemd sets $JOURNAL_STREAM to its device:inode."""
    stream = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(fmt: str = "auto", verbose: int = 0) -> None:
    """fmt: text, json, journal, or auto (journal when stderr goes to journald, else text)."""
    if fmt == "auto":
        fmt = "journal" if under_journal() else "text"
    handler: logging.Handler
    if fmt == "journal":
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else
                             TextFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("dispersiond")
    root.handlers[:] = [handler]
    # Commands are quiet unless asked (-v: info, -vv: debug); the daemon logs at info.
    root.setLevel(logging.WARNING - 10 * min(verbose, 2))
    root.propagate = False


#: Event fields that tell a file's size: kept at debug level only (sizes are as private as
#: names; at info a file is its id).
DEBUG_ONLY = frozenset({"size", "public_bytes", "private_bytes"})


def event(level: int, msg: str, **fields) -> None:
    """Log a structured event; `fields` become JSON keys, journal fields or key=value pairs."""
    if level > logging.DEBUG:
        fields = {k: v for k, v in fields.items() if k not in DEBUG_ONLY}
    log.log(level, msg, extra={"fields": fields})


def batch_event(level: int, msg: str, summary: str, items: list[dict[str, Any]]) -> None:
    """Per-file events of a batch: a lone file's line at `level`, as ever; a batch's
    per-file lines at debug and one `summary` line (`count`) at `level`. A burst of
    1,000 small files wrote 3,000 lines, each a record formatted under the GIL the
    encoders need; an operator following one file turns on debug."""
    if len(items) == 1:
        event(level, msg, **items[0])
        return
    if not items:
        return
    if log.isEnabledFor(logging.DEBUG):
        for fields in items:
            event(logging.DEBUG, msg, **fields)
    event(level, summary, count=len(items))
