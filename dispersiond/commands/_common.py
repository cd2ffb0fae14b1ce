"""Helpers shared by the commands: config loading, JSON output, progress bars."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, Iterator

from ..config import Config, find_config, load_config


def add_config(p: argparse.ArgumentParser) -> None:
    """Accept -c after the command too (`dispersiond put -c CFG f`), not only before it."""
    p.add_argument("-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS,
                   help="configuration file")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def config(args: argparse.Namespace) -> Config:
    return load_config(find_config(getattr(args, "config", None)))


PASSPHRASE_ENV = "DISPERSIOND_PASSPHRASE"


def ask_passphrase(confirm: bool = False, min_len: int = 0, env: str = PASSPHRASE_ENV,
                   what: str = "passphrase") -> str:
    """$DISPERSIOND_PASSPHRASE (or `env`), or asked for at the terminal (twice with confirm)."""
    import getpass
    import os

    from ..errors import DispersiondError

    phrase = os.environ.get(env)
    if not phrase:
        if not sys.stdin.isatty():
            raise DispersiondError(f"a {what} is needed: set {env} or run this in a terminal")
        phrase = getpass.getpass(f"{what}: ")
        if confirm and phrase != getpass.getpass("again: "):
            raise DispersiondError("the passphrases differ")
    if len(phrase) < min_len:
        raise DispersiondError(f"use a {what} of at least {min_len} characters")
    return phrase


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, sort_keys=True, default=str)
    sys.stdout.write("\n")


@contextlib.contextmanager
def transfer_progress(label: str, total: int | None, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr (only on a terminal); yields an advance(n) callback."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n: prog.advance(task, n)
