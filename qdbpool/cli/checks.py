"""Check the role of every host of a cluster at once, each within a deadline.

Each host is checked by `qdbpool.cluster.check.check_host`, as the pools' monitor checks it,
in a thread of its own: a stalled host delays no other. A check that misses the deadline is
reported down and abandoned: the socket of its probe connection is shut down (so a read
blocked on it returns) but the connection itself is closed by the check's own thread, never
from outside: closing a libpq connection under the thread using it can crash the process.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qdbpool.cluster.check import check_host
from qdbpool.drivers.base import HostDriver, Role
from qdbpool.dsn import HostPort

ProgressCallback = Callable[[int, int], None]
"""Called as `(finished, total)` each time a check ends within a round."""


@dataclass(frozen=True)
class HostResult:
    """What one check of one host found. `error` is one line, free of credentials."""

    address: HostPort
    role: Role
    response_ms: float | None = None  # the role query's round trip
    lag_s: float | None = None  # replicas only; None when the server cannot tell
    error: str | None = None


class _Check:
    """One host's check in flight. Its thread owns `conn`; `lock` guards the handover."""

    def __init__(self, address: HostPort) -> None:
        self.address = address
        self.lock = threading.Lock()
        self.conn: Any = None
        self.abandoned = False  # the round gave up on it: its result goes nowhere
        self.result: HostResult | None = None
        self.ended = threading.Event()  # its connection is closed, its thread returning


class Prober:
    """Runs rounds of checks over `addresses` with `driver`, `timeout` seconds each.

    `scrub` is applied to every error text (belt and braces over the driver's own
    redaction). Call `close()` when done: it cuts off checks still blocked on a host.
    """

    def __init__(
        self,
        driver: HostDriver,
        addresses: Sequence[HostPort],
        timeout: float,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self._driver = driver
        self._addresses = tuple(addresses)
        self._timeout = timeout
        self._scrub = scrub
        # The last check of each host. A host gets no second check while its last one is
        # out (stuck connecting to a stalled host, say), so threads cannot pile up.
        self._last: dict[HostPort, _Check] = {}

    def round(self, on_progress: ProgressCallback | None = None) -> list[HostResult]:
        """Check every host once; one result per address, in the given order."""
        deadline = time.monotonic() + self._timeout
        finished: queue.SimpleQueue[_Check] = queue.SimpleQueue()
        results: dict[HostPort, HostResult] = {}
        checks: list[_Check] = []
        for address in self._addresses:
            if self._still_out(address):
                results[address] = self._no_answer(address, " (an earlier check is still out)")
            else:
                checks.append(self._start(address, finished))
        self._wait(checks, finished, deadline, len(results), on_progress)
        for check in checks:
            results[check.address] = self._outcome(check)
        return [results[address] for address in self._addresses]

    def _still_out(self, address: HostPort) -> bool:
        last = self._last.get(address)
        return last is not None and not last.ended.is_set()

    def _start(self, address: HostPort, finished: queue.SimpleQueue[_Check]) -> _Check:
        check = _Check(address)
        thread = threading.Thread(
            target=self._run,
            args=(check, finished),
            name=f"qdbpool-probe[{address}]",
            daemon=True,  # a host stuck in connect must not keep the process alive
        )
        self._last[address] = check
        thread.start()
        return check

    def _wait(
        self,
        checks: list[_Check],
        finished: queue.SimpleQueue[_Check],
        deadline: float,
        done: int,
        on_progress: ProgressCallback | None,
    ) -> None:
        """Until every check has ended or the deadline has passed."""
        total = done + len(checks)
        if on_progress is not None:
            on_progress(done, total)
        for _ in checks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                finished.get(timeout=remaining)
            except queue.Empty:
                return
            done += 1
            if on_progress is not None:
                on_progress(done, total)

    def _outcome(self, check: _Check) -> HostResult:
        """The check's result, or down if it has none yet: then it is abandoned."""
        with check.lock:
            if check.result is not None:
                return check.result
            check.abandoned = True
            if check.conn is not None:
                # Under the lock: the thread has not closed it, so the fd is still its own.
                self._driver.sever(check.conn)
        return self._no_answer(check.address, "")

    def close(self, grace: float = 0.5) -> None:
        """Cut off checks still out (late ones, or all of a round interrupted by Ctrl-C)
        and give their threads up to `grace` seconds to close their connections. A thread
        still connecting is not waited for: it is a daemon thread, bounded by its connect
        timeout, and closes what it opened when that returns."""
        deadline = time.monotonic() + grace
        severed: list[_Check] = []
        for check in self._last.values():
            with check.lock:
                check.abandoned = True
                if check.conn is not None:
                    self._driver.sever(check.conn)
                    severed.append(check)  # its read fails now: it ends soon
        self._last.clear()
        for check in severed:
            check.ended.wait(max(0.0, deadline - time.monotonic()))

    def _no_answer(self, address: HostPort, why: str) -> HostResult:
        return HostResult(address, Role.DOWN, error=f"no answer within {self._timeout:g}s{why}")

    def _run(self, check: _Check, finished: queue.SimpleQueue[_Check]) -> None:
        result: HostResult | None = None
        try:
            result = self._check(check)
        except Exception as exc:  # a bug of ours: still report, never leave the round waiting
            result = HostResult(check.address, Role.UNKNOWN, error=self._describe(exc))
        finally:
            # Closed before the result is published: once a round has every result, it
            # leaves no connection open behind it.
            with check.lock:
                conn, check.conn = check.conn, None
            if conn is not None:
                self._driver.close(conn)
            with check.lock:
                if not check.abandoned:
                    check.result = result
            check.ended.set()
            finished.put(check)

    def _check(self, check: _Check) -> HostResult:
        def adopt(conn: Any) -> bool:
            with check.lock:
                check.conn = conn  # from now on _run closes it, whatever happens
                return not check.abandoned

        found = check_host(self._driver, check.address, self._timeout, adopt=adopt)
        if found is None:  # connected only after the round gave up
            return self._no_answer(check.address, "")
        return HostResult(
            check.address,
            found.role,
            response_ms=None if found.response_time is None else found.response_time * 1000.0,
            lag_s=found.replica_lag,
            error=None if found.error is None else self._one_line(found.error),
        )

    def _describe(self, exc: BaseException) -> str:
        return self._one_line(self._driver.describe_error(exc))

    def _one_line(self, text: str) -> str:
        return " ".join(self._scrub(text).split())  # one line, whatever the driver said
