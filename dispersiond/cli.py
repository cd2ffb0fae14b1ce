# PYTHON_ARGCOMPLETE_OK
"""Command line: `dispersiond [-c CONFIG] COMMAND ...`.

Each command lives in `dispersiond/commands/<name>.py` with a `register(subparsers)`
function, so the parser stays small and every command is found in one place.
Shell completion comes from argcomplete (`register-python-argcomplete dispersiond`,
installed by deploy/install.sh); the marker above lets its global hook find us too.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from . import __version__
from .errors import DispersiondError

# Order here is the order `--help` lists them in.
COMMANDS = [
    "init", "put", "ls", "restore", "verify", "repair", "recover", "rotate_key", "forget",
    "prune", "run", "status", "keygen", "identity", "share", "export", "request", "requests",
    "open_share", "audit", "rekey",
    "se", "bench", "analyze",
]

EXIT_ERROR = 2
EXIT_STORE = 3


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` (a module of COMMANDS) just that command's
    part: a command needs none of the others, and importing and registering all of
    them costs a `restore` more than its own start-up."""
    parser = argparse.ArgumentParser(
        prog="dispersiond",
        description="Protect health records before they leave the device: selective "
                    "encryption splits each file into a small private fragment kept on "
                    "trusted storage and a large public fragment dispersed to untrusted clouds.",
        epilog="Run 'dispersiond COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"dispersiond {__version__}")
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="configuration file (default: $DISPERSIOND_CONFIG or "
                             "./dispersiond.yaml)")
    parser.add_argument("--log-format", choices=["auto", "text", "json", "journal"],
                        default="auto",
                        help="log line format: json for log shippers, journal for journald "
                             "(priorities, FILE_ID= fields); auto: journal when stderr goes "
                             "to the journal, else text")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else [only]:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


#: Options before the command that take a value (the value is not the command).
_VALUED = ("-c", "--config", "--log-format")


def command_of(argv: list[str]) -> str | None:
    """The module of the command `argv` names, if it names one of COMMANDS plainly; None
    (the whole parser is built) otherwise: help, a version, a typo, an abbreviation."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or not a.startswith("-"):
            name = argv[i + 1] if a == "--" and i + 1 < len(argv) else a
            module = name.replace("-", "_")
            return module if module in COMMANDS and "_" not in name else None
        i += 2 if _takes_value(a) else 1
    return None


def _takes_value(a: str) -> bool:
    """`a` is an option before the command whose value is the next argument: spelled
    out, abbreviated (`--conf`), or last of a cluster of short ones (`-vc`)."""
    if a.startswith("--"):
        return "=" not in a and len(a) > 2 and any(v.startswith(a) for v in _VALUED[1:])
    return "=" not in a and a.endswith("c")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    only = None if "_ARGCOMPLETE" in os.environ else command_of(argv)
    parser = build_parser(only)
    if only is not None and only.replace("_", "-") not in _commands(parser):
        parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    from .logs import setup_logging

    setup_logging(args.log_format, args.verbose)
    try:
        return int(args.func(args) or 0)
    except DispersiondError as exc:
        from .display import shown

        # Messages may quote names and paths: nothing printed can drive the terminal.
        print("dispersiond: error: " + "\n".join(map(shown, str(exc).split("\n"))),
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("dispersiond: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, permissions, a vanished path: say which, no traceback
        from .display import shown

        where = f": {shown(exc.filename)}" if exc.filename else ""
        hint = (" (free some space; what was done so far is kept and resumes)"
                if exc.errno == errno.ENOSPC else "")
        print(f"dispersiond: error: {exc.strerror or exc}{where}{hint}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # store errors and the like: one line, no traceback
        from backends.base import StoreError

        if isinstance(exc, StoreError):
            print(f"dispersiond: error: {exc}", file=sys.stderr)
            return EXIT_STORE
        raise


if __name__ == "__main__":
    sys.exit(main())


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level command names `parser` knows."""
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name in a.choices}
