"""Topology: one monitor thread that keeps every host's role up to date.

Each round checks all hosts at once (one worker per host, so a stalled host delays no
other) and gives each check `refresh_timeout` seconds; a host that does not answer in time
is marked down and the sockets of its connections are shut down, so no caller stays
blocked on it. Rounds come every `refresh_delay` seconds, and back to back (every
`urgent_interval`, 5 ms) while a caller waits for a role no host has, or a host is suspect:
that is what makes a failover quick without polling the cluster hard the rest of the time.

A host whose checks fail is checked again only after a delay that doubles with each failure
(from 50 ms up to 1 s, with jitter), however urgent the rounds: a server that accepts
connections but fails every check must not get a new connection every 5 ms. One answer
ends the back-off. New connections back off the same way on their own: a server that answers
its checks but refuses new sessions (at its connection limit) gets a new one only when the
delay after the last failure has passed; one that opens, or a change of the host's role,
ends it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from qdbpool import _fork
from qdbpool.cluster.check import CheckResult, check_host
from qdbpool.cluster.hosts import HostState, HostStatus
from qdbpool.drivers.base import HostDriver, Role
from qdbpool.dsn import HostPort
from qdbpool.errors import NoHostAvailableError
from qdbpool.events import Event, FailoverObserved, HostRoleChanged, Listeners
from qdbpool.protocol import Generation

logger = logging.getLogger("qdbpool")

# Back-off of a failing host's checks: the first retry after about FIRST seconds, doubling
# up to MAX, each delay drawn between half and all of it (so hosts and processes spread out).
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0

Workers = concurrent.futures.ThreadPoolExecutor
Selector = Callable[[Sequence[HostState]], HostState | None]


class Topology:
    def __init__(
        self,
        addresses: Sequence[HostPort],
        driver: HostDriver,
        *,
        refresh_delay: float,
        refresh_timeout: float,
        urgent_interval: float = 0.005,
        latency_window: int = 32,
    ) -> None:
        self._addresses = tuple(addresses)
        self._driver = driver
        self._refresh_delay = refresh_delay
        self._refresh_timeout = refresh_timeout
        self._urgent_interval = urgent_interval
        self._latency_window = latency_window
        # Listeners of role changes and failovers: kept across a fork, like the options.
        self.events = Listeners()
        self._reset_state()
        _fork.watch(self)

    def _reset_state(self) -> None:
        self.hosts = [HostState(a, self._latency_window) for a in self._addresses]
        # Moves on whenever any host changes role: what a read routed to the primary (for
        # want of a replica) watches, so that it moves to a replica once one is up.
        self.roles_changed = Generation()
        self._changed = threading.Condition()  # guards host state; notified on every change
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._waiting = 0  # callers waiting in choose(): rounds go back to back meanwhile
        self._watchers: list[Callable[[], None]] = []  # see waiting()
        self._severers: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = (
            weakref.WeakKeyDictionary()
        )  # see opened()
        self._runs = 0  # moves on at each close()
        self._jitter = random.Random()
        self._closed = False
        self._last_primary: HostPort | None = None  # the last host seen as the primary
        self._pending: list[Event] = []  # found under the lock, emitted once it is let go

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor (idempotent). Done lazily, so that a factory made before a
        fork starts its thread in the process that uses it, and again after close(), so
        that a new pool can use a factory whose last pool closed it."""
        with self._changed:
            if self._closed:
                self._reopen()
            if self._thread is None:
                self._launch()
        self._emit_pending()  # what _reopen found

    def _launch(self) -> None:
        """Under the lock: the monitor thread and its workers."""
        names = ",".join(str(a) for a in self._addresses)
        stop = self._stop = threading.Event()
        workers = self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.hosts), thread_name_prefix="qdbpool-check"
        )
        self._thread = threading.Thread(
            target=self._monitor,
            args=(stop, workers),  # its own: a monitor closed late never sees a new one's
            name=f"qdbpool-monitor[{names}]",
            daemon=True,
        )
        self._thread.start()

    def _reopen(self) -> None:
        """Under the lock, after close(): every host is unknown until checked again (its
        connections' generation moves on), as in a new topology; the host objects stay,
        so a check still out from before ends, and closes its probe, as usual."""
        self._closed = False
        self._thread = self._workers = None
        for host in self.hosts:
            self._set_role(host, Role.UNKNOWN, None)
            host.checks = host.failures = host.open_failures = 0
            host.next_check = host.open_retry_at = 0.0
            host.replica_lag = None
        self.roles_changed.value += 1  # even if every host was unknown already

    def close(self) -> None:
        # A probe is closed only by a thread that is not using it: a check in progress
        # owns its probe (closing it under the check would free what libpq is reading), so
        # it is only severed here and the check closes it as it ends (see _end_check).
        idle_probes = []
        with self._changed:
            self._closed = True
            self._runs += 1  # callers waiting in choose() from before give up
            thread, workers, stop = self._thread, self._workers, self._stop
            for host in self.hosts:
                if host.probe is None:
                    continue
                if host.checking:
                    self._driver.sever(host.probe)  # a check blocked on it returns now
                else:
                    idle_probes.append(host.probe)
                    host.probe = None
            self._notify_locked()
        stop.set()
        self._wake.set()
        for probe in idle_probes:
            self._driver.close(probe)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._refresh_timeout + 1.0)
        if workers is not None:
            # A check still connecting to a stalled host finishes on its own and, seeing
            # the topology closed, closes what it opened (see _check).
            workers.shutdown(wait=False, cancel_futures=True)

    def _after_fork_in_child(self) -> None:
        # The monitor thread and workers do not exist here; the probe connections are the
        # parent's and must be neither used nor closed.
        for host in self.hosts:
            if host.probe is not None:
                _fork.keep_inherited(host.probe)
        closed = self._closed
        self._reset_state()
        self._closed = closed

    # -- what factories ask -------------------------------------------------------------

    def choose(
        self, select: Selector, timeout: float, what: str, *, shown_timeout: float | None = None
    ) -> tuple[HostState, int, int]:
        """A host picked by `select` among the current hosts, with its generation and the
        value of `roles_changed`, read together; waits up to `timeout` for one to qualify,
        then raises NoHostAvailableError (at once when every host refused our credentials
        or options: waiting cannot help).

        The host's `opening` count is raised before the lock is let go (so that threads
        choosing together see each other's picks); the caller must `opened()` it."""
        self.start()
        deadline = time.monotonic() + timeout
        with self._changed:
            self._waiting += 1
            run = self._runs
            self._wake.set()  # a round now; then every urgent_interval while we wait
            try:
                while True:
                    if self._runs != run:
                        raise NoHostAvailableError(f"no {what}: the pool's factory is closed")
                    chosen = self._choose_locked(select, what)
                    if chosen is not None:
                        return chosen
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        waited = timeout if shown_timeout is None else shown_timeout
                        raise NoHostAvailableError(
                            f"no {what} available within {waited:g}s; hosts: {self._describe()}"
                        )
                    self._changed.wait(remaining)
            finally:
                self._waiting -= 1

    def try_choose(self, select: Selector, what: str) -> tuple[HostState, int, int] | None:
        """`choose` without waiting: None when no host qualifies now. For callers that
        must not block (asyncio): they wait in between, inside `waiting()`."""
        self.start()
        with self._changed:
            return self._choose_locked(select, what)

    @contextlib.contextmanager
    def waiting(self, changed: Callable[[], None]) -> Iterator[None]:
        """While a caller waits for a host outside `choose` (see `try_choose`): checks run
        back to back, as for callers waiting in `choose`, and `changed` is called (on the
        monitor's thread, under the topology's lock: it must only wake the caller) at each
        change that callers in `choose` are woken for."""
        with self._changed:
            self._waiting += 1
            self._watchers.append(changed)
        self._wake.set()
        try:
            yield
        finally:
            with self._changed, contextlib.suppress(ValueError):  # reset by a fork
                self._waiting -= 1
                self._watchers.remove(changed)

    def _notify_locked(self) -> None:
        self._changed.notify_all()
        for changed in self._watchers:
            changed()

    def _choose_locked(self, select: Selector, what: str) -> tuple[HostState, int, int] | None:
        if self._closed:
            raise NoHostAvailableError(f"no {what}: the pool's factory is closed")
        host = select(self.hosts)
        if host is not None:
            host.opening += 1
            return host, host.generation.value, self.roles_changed.value
        if all(h.refused_us for h in self.hosts):
            raise NoHostAvailableError(
                f"no {what}: every host refused the connection settings; hosts: {self._describe()}"
            )
        return None

    def opened(
        self, host: HostState, conn: object | None, sever: Callable[[Any], None] | None = None
    ) -> None:
        """The end of an open that `choose` counted: `conn` joins the host's connections
        (None: the open was abandoned, or failed for our settings). `sever(conn)` shuts its
        socket down when the host stops answering, for a connection of a library the host
        driver does not know (asyncpg's): by default, the driver's `sever`."""
        with self._changed:
            host.opening -= 1
            if conn is not None:
                host.open_failures, host.open_retry_at = 0, 0.0
                host.connections.add(conn)
                if sever is not None:
                    self._severers[conn] = sever

    def open_failed(self, host: HostState, why: str, *, role_changed: bool = False) -> None:
        """The end of an open that `choose` counted, failed for the host's state: `host` is
        suspect (see `suspect`), and takes no new connection before a back-off has passed,
        whatever its checks answer meanwhile (HostState.takes_new_connections). Callers
        waiting meanwhile keep the rounds urgent, and are woken at each; nobody waiting,
        the monitor keeps its pace."""
        with self._changed:
            host.opening -= 1
            host.open_failures += 1
            host.open_retry_at = time.monotonic() + self._backoff(host.open_failures)
            host.open_error = why
        self.suspect(host, why, role_changed=role_changed)

    def forget(self, host: HostState, conn: object) -> None:
        with self._changed:
            host.connections.discard(conn)

    def describe(self) -> str:
        """Every host's last known state, one line (for error messages)."""
        with self._changed:
            return self._describe()

    def suspect(self, host: HostState, why: str, *, role_changed: bool = False) -> None:
        """An error makes `host` doubtful: open no new connection there until a check,
        started now rather than at the next tick, answers. With `role_changed` (a write
        refused as read-only) the role is known to be wrong: connections to the host are
        made unfit at once too."""
        with self._changed:
            if host.role in (Role.PRIMARY, Role.REPLICA):
                if role_changed:
                    self._set_role(host, Role.UNKNOWN, why)
                else:
                    host.suspect, host.error = True, why
                logger.debug("host %s suspect: %s", host.address, why)
                self._notify_locked()
        self._wake.set()
        self._emit_pending()

    def hint(self, why: str, held_back: Collection[HostPort] = ()) -> None:
        """Word from an orchestrator (Patroni) that the cluster changed or is about to:
        every host is re-checked now, and the hosts in `held_back` (not the leader, or
        announced to stop being it) take no new connection for writes, whatever their
        checks say, until a later hint lifts it; one that was a primary has its
        connections made unfit at once. Writers then wait in choose() for a primary that
        the checks confirm: an announcement alone never makes a host a primary."""
        with self._changed:
            for host in self.hosts:
                hold = host.address in held_back
                if hold and not host.held_back and host.role is Role.PRIMARY:
                    self._set_role(host, Role.UNKNOWN, why)
                elif host.role in (Role.PRIMARY, Role.REPLICA):
                    host.suspect, host.error = True, why
                host.held_back = hold
            logger.debug("hint: %s; held back: %s", why, ",".join(map(str, held_back)) or "-")
            self._notify_locked()
        self._wake.set()
        self._emit_pending()

    def ready(self, primaries: int | None, replicas: int | None, timeout: float) -> None:
        """Wait until at least `primaries` primaries and `replicas` replicas are up (or,
        with neither given, until every host was checked once)."""
        self.start()
        deadline = time.monotonic() + timeout

        def satisfied() -> bool:
            if primaries is None and replicas is None:
                return all(h.checks > 0 for h in self.hosts)
            roles = [h.role for h in self.hosts]
            return roles.count(Role.PRIMARY) >= (primaries or 0) and roles.count(Role.REPLICA) >= (
                replicas or 0
            )

        with self._changed:
            while not satisfied():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    wanted = (
                        "every host checked once"
                        if primaries is None and replicas is None
                        else f"{primaries or 0} primary and {replicas or 0} replica hosts"
                    )
                    raise NoHostAvailableError(
                        f"cluster not ready within {timeout:g}s (wanted {wanted}); "
                        f"hosts: {self._describe()}"
                    )
                self._wake.set()
                self._changed.wait(remaining)

    def statuses(self) -> list[HostStatus]:
        with self._changed:
            return [h.status() for h in self.hosts]

    def _describe(self) -> str:
        return "; ".join(str(h.status()) for h in self.hosts)

    # -- role changes -------------------------------------------------------------------

    def _set_role(self, host: HostState, role: Role, error: str | None) -> bool:
        """Under the lock: record `role` (see HostState.set_role), queue the events it
        makes, and move `roles_changed` on if it changed."""
        old = host.role
        if not host.set_role(role, error):
            return False
        self.roles_changed.value += 1
        if self.events:
            self._pending.append(HostRoleChanged(host.address, old, role))
        if role is Role.PRIMARY:
            last = self._last_primary
            if last is not None and last != host.address and self.events:
                self._pending.append(FailoverObserved(last, host.address))
            self._last_primary = host.address
        return True

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (under the lock)."""
        delay: float = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(failures - 1, 32))
        return delay * self._jitter.uniform(0.5, 1.0)

    def _emit_pending(self) -> None:
        """After the lock is let go: deliver what _set_role queued."""
        if not self._pending:
            return
        with self._changed:
            pending, self._pending = self._pending, []
        for event in pending:
            self.events.emit(event)

    # -- the monitor ----------------------------------------------------------------------

    def _monitor(self, stop: threading.Event, workers: Workers) -> None:
        while not stop.is_set():
            try:
                self._round(workers)
            except Exception:  # never let the monitor die: log and go on next tick
                logger.exception("qdbpool monitor round failed")
            # What the checks found goes to the listeners here, not from the checks: a
            # listener's time would count as the host's, and a slow one would get a host
            # that answers marked down.
            self._emit_pending()
            with self._changed:
                urgent = self._waiting > 0 or any(
                    h.role is Role.UNKNOWN or h.suspect for h in self.hosts
                )
            self._wake.wait(self._urgent_interval if urgent else self._refresh_delay)
            self._wake.clear()

    def _round(self, workers: Workers) -> None:
        running: dict[concurrent.futures.Future[None], HostState] = {}
        now = time.monotonic()
        for host in self.hosts:
            with self._changed:  # `checking` decides who may close the probe (see close)
                if self._closed:
                    return
                if host.checking:  # a stalled check from an earlier round is still out
                    continue
                if host.next_check > now:  # failing: backing off
                    continue
                host.checking = True
            try:
                running[workers.submit(self._check, host)] = host
            except RuntimeError:  # shut down under us: the topology is closing
                self._end_check(host)
                return
        _, late = concurrent.futures.wait(running, timeout=self._refresh_timeout)
        for future in late:
            host = running[future]
            self._mark_down(host, f"no answer within {self._refresh_timeout:g}s", sever=True)

    def _check(self, host: HostState) -> None:
        try:
            reused = host.probe is not None
            found = self._check_once(host)
            if found is not None and not found.answered and reused and not self._closed:
                # A probe can die alone (a KILL, an idle timeout on the server): one more
                # try on a fresh connection before calling the host down.
                self._drop_probe(host)
                found = self._check_once(host)
            if found is None or self._closed:  # severed by close(): says nothing about the host
                return
            if found.answered:
                self._record(host, found)
            else:
                self._drop_probe(host)
                # A host whose role cannot be read serves nothing: down, whatever the reason.
                why = found.error or "no answer"
                self._mark_down(host, why, sever=False, refused_us=found.refused_us)
        finally:
            self._end_check(host)

    def _check_once(self, host: HostState) -> CheckResult | None:
        def adopt(probe: object) -> bool:
            with self._changed:  # close() decides who closes a probe by this (see close)
                if not self._closed:
                    host.probe = probe
                    return True
            self._driver.close(probe)  # closed while we were connecting
            return False

        return check_host(
            self._driver, host.address, self._refresh_timeout, probe=host.probe, adopt=adopt
        )

    def _end_check(self, host: HostState) -> None:
        with self._changed:
            host.checking = False
            # Closed during the check: close() left the probe to us.
            probe = host.probe if self._closed else None
            if probe is not None:
                host.probe = None
        if probe is not None:
            self._driver.close(probe)

    def _drop_probe(self, host: HostState) -> None:
        with self._changed:
            probe, host.probe = host.probe, None
        if probe is not None:
            self._driver.close(probe)

    def _record(self, host: HostState, found: CheckResult) -> None:
        with self._changed:
            if found.response_time is not None:
                host.latencies.append(found.response_time)
            host.replica_lag = found.replica_lag
            host.checks += 1
            host.failures, host.next_check = 0, 0.0  # it answers: checked as often as any
            if self._set_role(host, found.role, None):  # clears `suspect` too
                logger.info("host %s is now %s", host.address, found.role.value)
                host.open_failures, host.open_retry_at = 0, 0.0  # new role, new chances
            self._notify_locked()

    def _mark_down(
        self, host: HostState, why: str, *, sever: bool, refused_us: bool = False
    ) -> None:
        with self._changed:
            host.checks += 1
            host.failures += 1
            host.next_check = time.monotonic() + self._backoff(host.failures)
            changed = self._set_role(host, Role.DOWN, why)  # also ends a suspect's connections
            host.refused_us = refused_us
            self._notify_locked()
            if sever:
                # A host that stopped answering: unblock everyone waiting on it. Under the
                # lock: a connection still listed here (or a probe still set) has not been
                # closed, so its socket number cannot have been reused by another one.
                if host.probe is not None:
                    self._driver.sever(host.probe)
                for conn in host.connections:
                    self._severers.get(conn, self._driver.sever)(conn)
        if changed:
            logger.warning("host %s is down: %s", host.address, why)
