"""The folders `run` needs beyond a valid config, checked before anything starts."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import ConfigError


@dataclass
class Paths:
    inbox: Path
    quarantine: Path


def _writable_dir(path: Path, what: str, setting: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot create the {what} {path} ({exc.strerror}); create "
                          "it and give the daemon's user write access") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting}: the daemon's user cannot write to the {what} {path} "
                          "(check its owner and mode, and ReadWritePaths= in the unit)")
    return path.resolve()


def check_paths(cfg: Config) -> Paths:
    """What `run` needs beyond a valid config; every problem is an actionable ConfigError."""
    if not cfg.inbox:
        raise ConfigError("'inbox' is not set: the daemon protects files dropped into that "
                          "folder (add e.g. 'inbox: /var/spool/dispersiond/inbox')")
    state = _writable_dir(cfg.state_path, "state directory", "state_dir")
    inbox = _writable_dir(cfg.path(cfg.inbox), "inbox", "inbox")
    if inbox == state or state in inbox.parents:
        raise ConfigError("inbox: must not be inside state_dir (the state directory holds "
                          "claimed originals and keys to them)")
    quarantine = _writable_dir(cfg.path(cfg.quarantine_dir) if cfg.quarantine_dir
                               else state / "quarantine", "quarantine folder", "quarantine_dir")
    if quarantine == inbox:
        raise ConfigError("quarantine_dir: must not be the inbox (files would be taken again)")
    if cfg.after == "move":
        moved = _writable_dir(cfg.path(cfg.after_move_to or ""), "folder for protected "
                              "originals", "after_move_to")
        if moved == inbox:
            raise ConfigError("after_move_to: must not be the inbox (every file would be "
                              "protected again and again)")
    return Paths(inbox, quarantine)
