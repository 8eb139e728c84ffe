"""`python -m qdbpool probe DSN`: the role, response time and lag of every host of a DSN.

Exit status: 0 when a primary answered (in the last completed round, with --watch), 1 when
none did, 2 for bad usage or an invalid DSN, 130 when interrupted before a round completed,
143 when terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from qdbpool.cli.checks import HostResult, Prober
from qdbpool.cli.drivers import DriverUnavailable, make_driver
from qdbpool.cli.table import HOST_COLUMNS, host_table
from qdbpool.cli.watch import ChangeLog, LiveScreen, is_terminal, terminated_as_exit
from qdbpool.cluster import Role
from qdbpool.dsn import Redactor, parse_dsn
from qdbpool.errors import ConfigurationError

EXIT_PRIMARY = 0
EXIT_NO_PRIMARY = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

DEFAULT_TIMEOUT = 2.0
COLUMNS = HOST_COLUMNS

DESCRIPTION = """\
Check every host of a (multi-host) DSN at once and show its role: primary, replica,
down, or unknown (it answered but its role could not be read, e.g. a wrong password).

RESPONSE is the round trip of the role query, LAG the replication lag of replicas in
seconds (blank when the server cannot tell). The password never appears in the output."""

EPILOG = """\
DSN forms:
  postgresql://user:pw@db1:5432,db2,db3/app     (also postgres://)
  'host=db1,db2 port=5432,5433 user=app dbname=app'
  mysql://user:pw@db1:3306,db2/app              (also mariadb://)

exit status:
  0    a primary answered (in the last round, with --watch)
  1    no primary answered
  2    bad usage or an invalid DSN
  130  interrupted (Ctrl-C) before any round completed
  143  terminated (SIGTERM)

--watch on a terminal redraws one screen in place (the table, then the latest
changes); into a pipe or file it prints a line per change instead: a host's role
(up/down included) and which host is primary, each line with its time.

--json prints one object per round, on its own line (with --watch too):
  {"dsn": "<the DSN, password redacted>",
   "hosts": [{"host": str, "port": int, "role": str, "response_ms": float|null,
              "lag_s": float|null, "error": str|null}, ...],
   "primary": "host:port" or null}"""


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def add_parser(subparsers: Any) -> None:
    """Register `probe` on the subparsers of the `python -m qdbpool` parser."""
    parser = subparsers.add_parser(
        "probe",
        help="show the role, response time and lag of every host of a DSN",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dsn", metavar="DSN", help="a PostgreSQL or MySQL/MariaDB DSN")
    parser.add_argument(
        "--watch",
        metavar="SECONDS",
        type=_positive_seconds,
        help="check again every SECONDS until Ctrl-C: one screen redrawn in place on a "
        "terminal, a line per change otherwise",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per round instead of a table"
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"give each host this long to answer (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(run=run)


class Progress:
    """`probing 3 hosts... 2/3 done` on stderr, rewritten in place; only on a terminal, so
    pipes and logs get clean output."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._enabled = stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            self._enabled = False
        self._shown = False

    def update(self, done: int, total: int) -> None:
        if self._enabled:
            noun = "host" if total == 1 else "hosts"
            self._stream.write(f"\r\x1b[Kprobing {total} {noun}... {done}/{total} done")
            self._stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")  # back to the line's start, erase to its end
            self._stream.flush()
            self._shown = False


def _primary(results: Sequence[HostResult]) -> HostResult | None:
    return next((r for r in results if r.role is Role.PRIMARY), None)


def round_json(redacted_dsn: str, results: Sequence[HostResult]) -> dict[str, Any]:
    """One round as the JSON object --json prints."""
    primary = _primary(results)
    return {
        "dsn": redacted_dsn,
        "hosts": [
            {
                "host": r.address.host,
                "port": r.address.port,
                "role": r.role.value,
                "response_ms": None if r.response_ms is None else round(r.response_ms, 3),
                "lag_s": r.lag_s,
                "error": r.error,
            }
            for r in results
        ],
        "primary": None if primary is None else str(primary.address),
    }


def run(args: argparse.Namespace) -> int:
    """Carry out `probe` with parsed arguments; returns the exit status."""
    setup = _setup(args)
    if setup is None:
        return EXIT_USAGE
    prober, redacted_dsn = setup
    progress = Progress(sys.stderr)
    status: int | None = None
    try:
        with terminated_as_exit(), _output(args, redacted_dsn) as show:
            while True:
                started = time.monotonic()
                results = prober.round(progress.update)
                progress.clear()
                # Before showing: a Ctrl-C just after a round reached the screen must exit
                # with that round's status, not the one before.
                status = EXIT_PRIMARY if _primary(results) is not None else EXIT_NO_PRIMARY
                show(results)
                if args.watch is None:
                    return status
                time.sleep(max(0.0, started + args.watch - time.monotonic()))
    except KeyboardInterrupt:
        progress.clear()
        if args.watch is None or status is None:
            return EXIT_INTERRUPTED
        return status  # --watch: Ctrl-C is how it ends, and the last round says how it went
    finally:
        prober.close()


Show = Callable[[Sequence[HostResult]], None]


@contextlib.contextmanager
def _output(args: argparse.Namespace, redacted_dsn: str) -> Iterator[Show]:
    """What shows each round: JSON lines, the table once, or (--watch) the terminal's
    live screen or a line per change."""
    out = sys.stdout
    if args.json:
        yield lambda results: _write(out, json.dumps(round_json(redacted_dsn, results)) + "\n")
    elif args.watch is None:
        yield lambda results: _write(out, host_table(results) + "\n")
    elif is_terminal(out):
        title = f"every {args.watch:g}s, Ctrl-C to stop   qdbpool probe {redacted_dsn}"
        with LiveScreen(out, title) as screen:
            yield screen.show
    else:
        yield ChangeLog(out).show


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()  # a pipe is block-buffered: each round must reach its reader now


def _setup(args: argparse.Namespace) -> tuple[Prober, str] | None:
    """The prober for the DSN and the DSN as shown; None (said on stderr) if it is invalid."""
    err = sys.stderr
    try:
        parsed = parse_dsn(args.dsn)  # its errors never quote the password
    except ConfigurationError as exc:
        err.write(f"qdbpool probe: invalid DSN: {_one_line(str(exc))}\n")
        return None
    scrub = Redactor(parsed.secrets)
    try:
        driver = make_driver(parsed, args.timeout)
    except ConfigurationError as exc:
        err.write(f"qdbpool probe: invalid DSN: {_one_line(scrub(str(exc)))}\n")
        return None
    except DriverUnavailable as exc:
        err.write(f"qdbpool probe: {_one_line(str(exc))}\n")
        return None
    # A driver may log a warning (MySQL: no privilege to read the replication status);
    # the table already says what matters (a blank LAG), so keep stderr for our own words.
    _quiet_library_logging()
    prober = Prober(driver, parsed.hosts, args.timeout, scrub=scrub)
    return prober, parsed.to_url(redact=True)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _quiet_library_logging() -> None:
    logger = logging.getLogger("qdbpool")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
