"""The `qdbpool` command line (also `python -m qdbpool`): one subcommand per module of
this package."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from qdbpool._version import version
from qdbpool.cli import probe

__all__ = ["build_parser", "main"]

PROG = "python -m qdbpool"
SCRIPT = "qdbpool"  # the console script pyproject.toml installs


def _prog() -> str:
    """How the user called us, for usage lines: `python -m qdbpool` runs __main__.py."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return PROG if called in ("", "__main__.py", "-c") else SCRIPT


def build_parser() -> argparse.ArgumentParser:
    prog = _prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Command-line tools of qdbpool.",
        epilog=f"Run '{prog} COMMAND --help' for the options of a command.",
    )
    parser.add_argument(
        "--version", action="version", version=f"qdbpool {version()}", help="show the version"
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    probe.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the command; returns the
    exit status. Bad usage exits 2 through argparse (SystemExit), as usual."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return probe.EXIT_USAGE
    try:
        status: int = args.run(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly. Point stdout at /dev/null so
        # that flushing it again at exit raises nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status
