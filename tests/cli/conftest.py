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
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import pytest

from qdbpool.testing.availability import require_mariadb, under_ci
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


class Tmux:
    """A terminal a person would look at: one tmux window of a fixed size, on a private
    server (`tmux -L <unique name>`), running one command as a shell would. When the
    command exits, the window says `exit status N` and stays, so the terminal as the
    command left it can still be read."""

    def __init__(self, binary: str, tmp: Path, width: int, height: int) -> None:
        self.binary = binary
        self.socket = f"qdbpool-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.width = width
        self.height = height
        self._config = tmp / "tmux.conf"
        # No status line: the pane is the whole window.
        self._config.write_text("set -g status off\nset -g history-limit 5000\n")
        self._started = False

    def _capture(self, *args: str) -> str:
        # -J joins the lines the terminal wrapped, but keeps blanks: trim them.
        shown = self._tmux("capture-pane", "-p", "-J", *args, "-t", "cli")
        return "\n".join(line.rstrip() for line in shown.splitlines())

    def _tmux(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        done = subprocess.run(
            [self.binary, "-L", self.socket, "-f", str(self._config), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        return done.stdout

    def start(self, command: Sequence[str]) -> None:
        """Run `command` (its arguments as they are) in the window; then `cat` keeps the
        window open, reading the terminal, until the server is killed."""
        self._started = True
        size = ["-x", str(self.width), "-y", str(self.height)]
        # The trap keeps the shell alive through the Ctrl-C meant for the command (which
        # gets SIGINT's default back, as a trapped signal is not inherited).
        script = 'trap : INT; "$@"; echo "exit status $?"; exec cat'
        self._tmux(
            "new-session", "-d", "-s", "cli", *size, "-c", str(REPO),
            "--", "sh", "-c", script, "sh", *command,
        )  # fmt: skip

    def screen(self) -> str:
        """What the window shows now, line by line (a line wrapped by the terminal joined)."""
        return self._capture()

    def everything(self) -> str:
        """The scrollback history and the screen: what scrolled off shows up here."""
        return self._capture("-S", "-", "-E", "-")

    def pane(self, variable: str) -> str:
        """A tmux format variable of the pane, e.g. alternate_on, cursor_flag."""
        return self._tmux("display-message", "-p", "-t", "cli", f"#{{{variable}}}").strip()

    def send_keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "cli", *keys)

    def wait_for(self, done: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        """The screen, once `done(screen)` holds; AssertionError (with the screen) after
        `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if done(shown):
                return shown
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what} not on the screen within {timeout:g}s:\n{shown}")
            time.sleep(0.05)  # polling interval, not synchronisation

    def exit_status(self, timeout: float = 15.0) -> int:
        """Wait (bounded) for the command to exit; its exit status."""
        pattern = re.compile(r"^exit status (\d+)$", re.MULTILINE)
        shown = self.wait_for(lambda s: pattern.search(s) is not None, "the exit", timeout)
        found = pattern.search(shown)
        assert found is not None
        return int(found.group(1))

    def kill(self) -> None:
        """Stop this test's tmux server, and with it what runs in the window."""
        if not self._started:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            socket = self._tmux("display-message", "-p", "#{socket_path}").strip()
            self._tmux("kill-server")
            Path(socket).unlink(missing_ok=True)  # tmux leaves it behind


def require_tmux() -> str:
    """The path of tmux, or skip (locally) / fail (under CI, where .ci/run installs it)."""
    found = shutil.which("tmux")
    if found is None:
        reason = "tmux not installed (the terminal the --watch screen is tested in)"
        if under_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., Tmux]]:
    """tmux(command, width=100, height=30) -> a Tmux window running `python -m qdbpool
    *command`; its server is killed when the test ends, whatever the outcome."""
    binary = require_tmux()
    made: list[Tmux] = []

    def start(args: Sequence[str], width: int = 100, height: int = 30) -> Tmux:
        window = Tmux(binary, tmp_path, width, height)
        made.append(window)
        window.start(_command(args))
        return window

    try:
        yield start
    finally:
        for window in made:
            window.kill()
