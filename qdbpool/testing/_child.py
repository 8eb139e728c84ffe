"""A server process we started: stopped by its own pid, killed with its whole tree, reaped,
and watched by this process's watchdog in case we die first."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from qdbpool.testing import _process, _watchdog


class ChildProcess:
    """A server (or a server tool) we started and must reap."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.log_path = log_path
        # A killed server's own children must come back to us, to be reaped.
        _process.become_subreaper()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C in the terminal reaches the test run, which
                # then stops its servers in order, rather than every server at once.
                start_new_session=True,
            )
        self._watched = True
        self._started_by = os.getpid()
        _watchdog.watch(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        """Whether it still runs. In a forked child always False (the server is not its
        child: asking gives ECHILD), so a child never signals its parent's servers."""
        return self.proc.poll() is None

    def ours(self) -> bool:
        """Whether this process started it (not its parent before a fork)."""
        return os.getpid() == self._started_by

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the process alone, if it still runs (never pid 0: our own group)."""
        if self.running() and self.proc.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and all its descendants at once, reap them all, and remove
        the shared memory they left (a postmaster's, initdb's `postgres --single`'s).
        Nothing in a forked child: the server is its parent's."""
        if not self.ours():
            return
        descendants = _process.kill_tree(self.proc.pid) if self.running() else []
        self.wait(timeout=10)
        _process.reap(descendants)
        self.release_shared_memory(*descendants)

    def release_shared_memory(self, *descendants: int) -> None:
        """Remove the shared memory the process, or `descendants` of it, left when they
        died. Nothing in a forked child: the server is its parent's, and may still hold it."""
        if self.ours():
            _process.release_shared_memory(self.proc.pid, *descendants)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send `sig`, kill the whole tree if it has not exited after `timeout`; always reap."""
        self.send_signal(sig)
        if self.wait(timeout=timeout) is None:
            self.kill()

    def wait(self, timeout: float) -> int | None:
        """The exit code, once reaped; None if it still runs after `timeout` seconds."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._watched:  # its pid may be reused from now on
            self._watched = False
            _watchdog.forget(self.proc.pid)
        return code

    def log_tail(self, lines: int = 30) -> str:
        return _process.log_tail(self.log_path, lines)
