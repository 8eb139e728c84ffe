"""When a pool may try to open its next connection, after attempts that failed.

A server that refuses connections, or accepts them and then fails every check, must not be
answered with a connection storm. Each failed attempt (the factory raised, or a brand-new
connection failed its first ping) doubles the pause before the next one, from 50 ms up to a
cap of 1 s, with jitter so that many waiting callers do not retry in step. One success ends
the pause at once, so recovery costs nothing once the server heals.

The pool asks only when it opens a connection, never on the path of an idle checkout.
"""

from __future__ import annotations

import copy
import random
import threading
import time

from qdbpool.errors import PoolClosedError, PoolTimeoutError

INITIAL_DELAY = 0.05
MAX_DELAY = 1.0


class Backoff:
    """The pause a pool keeps between failing connection attempts (thread-safe)."""

    def __init__(self, closed: threading.Event) -> None:
        self._closed = closed  # set when the pool closes: a waiting caller stops at once
        self._lock = threading.Lock()
        self._failures = 0
        self._not_before = 0.0
        self._last_error: BaseException | None = None

    @property
    def failures(self) -> int:
        """Failed attempts in a row (0 once one succeeded)."""
        return self._failures

    def wait_turn(self, deadline: float) -> None:
        """Return when the next attempt may start; raise if that is after `deadline`.

        Raises:
            PoolTimeoutError: the pause outlasts the deadline (its cause: the last failure).
            PoolClosedError: the pool closed while the caller waited.
        """
        with self._lock:
            not_before, last_error = self._not_before, self._last_error
        pause = not_before - time.monotonic()
        if pause <= 0:
            return
        if not_before > deadline:
            raise PoolTimeoutError(
                f"no connection could be opened in time: the last {self._failures} "
                f"attempt(s) failed, the next may start in {pause:.2f}s"
            ) from last_error
        if self._closed.wait(pause):
            raise PoolClosedError("the pool closed while waiting to retry a connection")

    def failed(self, error: BaseException) -> None:
        """An attempt failed: push the next one back (exponentially, with jitter)."""
        with self._lock:
            self._failures += 1
            delay = min(MAX_DELAY, INITIAL_DELAY * 2 ** min(self._failures - 1, 16))
            self._not_before = time.monotonic() + delay * random.uniform(0.5, 1.0)
            self._last_error = _detached(error)

    def succeeded(self) -> None:
        """An attempt worked: the next may start at once."""
        if self._failures:  # read without the lock: the usual case writes nothing
            with self._lock:
                self._failures = 0
                self._not_before = 0.0
                self._last_error = None


def _detached(error: BaseException) -> BaseException:
    """A copy of `error` without its traceback: the traceback holds the failing caller's
    frames, whose locals would otherwise live on here (a connection among them, kept open
    past its thread's end)."""
    try:
        twin = copy.copy(error)
    except Exception:  # a driver error that cannot be copied: its type and text will do
        twin = None
    if not isinstance(twin, BaseException):
        twin = RuntimeError(f"{type(error).__name__}: {error}")
    twin.__traceback__ = None
    return twin
