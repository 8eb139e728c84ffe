"""Fixtures for the `python -m qdbpool probe` tests, against real local servers.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file. Every server, proxy and child process made here is
stopped when its test (or module) ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import pytest

from qdbpool.testing.availability import require_mariadb
from qdbpool.testing.mariadb import MariaDBServer
from qdbpool.testing.postgres import PostgresCluster
from qdbpool.testing.proxy import FaultProxy

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

USER = "app"  # the user `app_cluster` (tests/conftest.py) creates, with `password`
MYSQL_DB = "appdb"

CLI_TIMEOUT = 60.0  # no single CLI run of these tests comes near it


# -- servers ------------------------------------------------------------------------------------


@pytest.fixture
def pg(shared_cluster: PostgresCluster) -> PostgresCluster:
    """The session's primary + 2 standbys; tests leave its topology alone (they break
    hosts through proxies instead)."""
    return shared_cluster


@pytest.fixture
def own_pg(app_cluster: Callable[[int], Any]) -> Iterator[PostgresCluster]:
    """A primary + 1 standby that the test may stop or kill."""
    with app_cluster(1) as c:
        yield c


@pytest.fixture(scope="module")
def mariadb(password: str) -> Iterator[MariaDBServer]:
    """One MariaDB server with user `app` (`password`) and database `appdb`."""
    require_mariadb()
    with MariaDBServer() as srv:
        srv.create_user(USER, password, MYSQL_DB)
        yield srv


@pytest.fixture
def proxy(closing: Callable[[Any], Any]) -> Callable[[str, int], FaultProxy]:
    """proxy(host, port) -> a FaultProxy in front of it, closed when the test ends."""

    def make(host: str, port: int) -> FaultProxy:
        p: FaultProxy = closing(FaultProxy(host, port))
        return p

    return make


# -- DSNs and secrets ---------------------------------------------------------------------------


@pytest.fixture
def secret_forms(password: str, secret_mark: str) -> list[str]:
    """Every form of the password a leak could take: raw, percent-encoded, repr-escaped,
    and the marker inside it (which covers any other encoding of the rest)."""
    return sorted(
        {
            password,
            quote(password, safe=""),
            quote(password),
            quote(password, safe="/:@"),
            password.replace(" ", "+"),
            secret_mark,
        }
    )


def _url(scheme: str, hosts: Sequence[tuple[str, int]], password: str, dbname: str) -> str:
    netloc = ",".join(f"{h}:{p}" for h, p in hosts)
    return f"{scheme}://{USER}:{quote(password, safe='')}@{netloc}/{dbname}"


@pytest.fixture
def pg_url(password: str) -> Callable[..., str]:
    """pg_url([(host, port), ...], password=the app's): a multi-host URL for user `app`."""
    return functools.partial(_url, "postgresql", password=password, dbname="postgres")


@pytest.fixture
def mysql_url(password: str) -> Callable[..., str]:
    """mysql_url([(host, port), ...]): a multi-host URL for user `app`, database `appdb`."""
    return functools.partial(_url, "mysql", password=password, dbname=MYSQL_DB)


@pytest.fixture
def hosts_of() -> Callable[[PostgresCluster], list[tuple[str, int]]]:
    def hosts(c: PostgresCluster) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in c.nodes]

    return hosts


# -- running the CLI ----------------------------------------------------------------------------


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "qdbpool", *args]


def _env() -> dict[str, str]:
    # The CLI must flush each round itself: run it with the block-buffered stdout a pipe
    # normally gets, even where the environment asks for unbuffered output.
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run_cli(*args): `python -m qdbpool *args` to its end (bounded), output captured."""

    def run(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _command(args),
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


class CliProcess:
    """`python -m qdbpool ...` running in the background; its stdout is collected line by
    line by a reader thread, so a test can wait for output with a deadline."""

    def __init__(self, args: Sequence[str], stderr: int | IO[Any] = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            _command(args),
            cwd=REPO,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        self.lines: list[str] = []
        self._stderr: list[str] = []
        self._new: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        assert self.proc.stdout is not None
        self._readers = [self._read(self.proc.stdout, self._on_stdout, self._on_eof)]
        if self.proc.stderr is not None:
            self._readers.append(self._read(self.proc.stderr, self._stderr.append, None))

    def _read(
        self,
        stream: IO[str],
        sink: Callable[[str], None],
        at_eof: Callable[[], None] | None,
    ) -> threading.Thread:
        def pump() -> None:
            for line in stream:  # ends at EOF, i.e. when the process exits
                sink(line)
            if at_eof is not None:
                at_eof()

        thread = threading.Thread(target=pump, name="cli-test-reader", daemon=True)
        thread.start()
        return thread

    def _on_stdout(self, line: str) -> None:
        self.lines.append(line)
        self._new.put(line)

    def _on_eof(self) -> None:
        self._new.put(None)

    def wait_for(self, done: Callable[[list[str]], bool], timeout: float = 30.0) -> list[str]:
        """Stdout lines so far, once `done(lines)` holds; AssertionError after `timeout`
        or if the process exits first."""
        deadline = time.monotonic() + timeout
        while not done(self.lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"output not seen within {timeout:g}s: {self.lines!r}")
            try:
                line = self._new.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"the CLI exited ({self.proc.wait()}) before the output came: "
                    f"{self.lines!r}; stderr: {self.stderr!r}"
                )
        return list(self.lines)

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C (SIGINT), then wait for the exit; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout)
        for thread in self._readers:
            thread.join(5)
        return status

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for thread in self._readers:
            thread.join(5)


@pytest.fixture
def spawn_cli() -> Iterator[Callable[..., CliProcess]]:
    """spawn_cli(*args, stderr=PIPE) -> a CliProcess; killed when the test ends."""
    made: list[CliProcess] = []

    def spawn(*args: str, stderr: int | IO[Any] = subprocess.PIPE) -> CliProcess:
        cli = CliProcess(args, stderr=stderr)
        made.append(cli)
        return cli

    yield spawn
    for cli in made:
        cli.stop()


# -- terminals ---------------------------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    """(master, slave) of a pseudo-terminal: a child's stderr that is a TTY."""
    if not hasattr(os, "openpty"):
        pytest.skip("no pseudo-terminals here")
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)
