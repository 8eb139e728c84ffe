"""RoutedFactory: a ConnectionFactory over a cluster, shared by the PostgreSQL and MySQL ones.

A new connection goes to the host the router picks among what the topology knows now; it
is tagged with that host's generation (`generation_of`), which the pool compares at each
checkout (no I/O), so a connection whose host was demoted, promoted or found down is never
handed out again. A read sent to the primary for want of a replica watches the cluster's
role changes instead, so that it moves once a replica is up.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qdbpool.cluster.hosts import HostState, HostStatus
from qdbpool.cluster.options import RoutingOptions, check_seconds
from qdbpool.cluster.router import Router
from qdbpool.cluster.topology import Selector, Topology
from qdbpool.drivers.base import ErrorJudge, HostDriver, Role
from qdbpool.dsn import HostPort, Redactor
from qdbpool.errors import ConfigurationError, NoHostAvailableError
from qdbpool.events import Listener
from qdbpool.protocol import ConnectionFactory, Generation

logger = logging.getLogger("qdbpool")


Choice = tuple[HostState, int, int]
"""A host chosen for a new connection, with its generation and the cluster's role-change
count when it was chosen."""


@dataclass(frozen=True)
class _Tag:
    host: HostState
    watched: Generation  # the connection is fit while watched.value == generation
    generation: int
    read_only: bool

    @property
    def current(self) -> bool:
        return self.watched.value == self.generation


class RoutedFactory(ConnectionFactory):
    """The base of `Postgres` and `MySQL`: connections routed to the primary, or with
    `read_only=True` to a replica, among hosts that a monitor thread keeps checking."""

    routes_reads = True
    paces_connects = True  # per host, in the topology: see ConnectionFactory.paces_connects

    def __init__(
        self, addresses: Sequence[HostPort], driver: HostDriver, options: RoutingOptions
    ) -> None:
        self._driver = driver
        self._acquire_timeout = options.acquire_timeout
        self._router = Router(options)
        self._topology = Topology(
            addresses,
            driver,
            refresh_delay=options.refresh_delay,
            refresh_timeout=options.refresh_timeout,
        )
        self._tags: weakref.WeakKeyDictionary[Any, _Tag] = weakref.WeakKeyDictionary()
        # Asked at every release: hand the pool the driver's own method, one call less.
        self.state_after_use = driver.state_after_use  # type: ignore[method-assign]
        self.after_use_hint = driver.after_use_hint

    # -- cluster ------------------------------------------------------------------------

    def ready(
        self,
        masters_count: int | None = None,
        replicas_count: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Wait until the cluster has at least this many primaries and replicas up (as in
        hasql); with neither given, until every host has been checked once.
        Raises NoHostAvailableError, listing each host's state, after `timeout`."""
        for name, count in (("masters_count", masters_count), ("replicas_count", replicas_count)):
            valid = isinstance(count, int) and not isinstance(count, bool) and count >= 0
            if count is not None and not valid:
                raise ConfigurationError(f"{name} must be an int >= 0 or None, not {count!r}")
        self._topology.ready(masters_count, replicas_count, check_seconds("timeout", timeout))

    def hosts(self) -> list[HostStatus]:
        """Each host's last known state (role, response time, lag, error)."""
        return self._topology.statuses()

    # -- ConnectionFactory ---------------------------------------------------------------

    def connect(self, *, read_only: bool = False) -> Any:
        what, select = self._route(read_only)
        deadline = time.monotonic() + self._acquire_timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            host, generation, roles_generation = self._topology.choose(
                select, remaining, what, shown_timeout=self._acquire_timeout
            )
            try:
                conn = self._driver.open(host.address, read_only=read_only)
            except Exception as exc:
                self.open_failed(host, exc, read_only, deadline)
                continue  # pick again
            self.adopt(conn, (host, generation, roles_generation), read_only)
            return conn

    # The steps of `connect`, shared with the asyncio factories (qdbpool.aio.factories),
    # which open their connections with their own driver and wait without blocking.

    def _route(self, read_only: bool) -> tuple[str, Selector]:
        if read_only:
            return "replica", self._router.select_replica
        return "primary", self._router.select_primary

    def try_choose(self, read_only: bool) -> Choice | None:
        """A host to open a connection to for this role, now, or None (then wait inside
        `waiting()` and ask again). Every choice must be ended by `adopt` or
        `open_failed`."""
        what, select = self._route(read_only)
        return self._topology.try_choose(select, what)

    def waiting(self, changed: Callable[[], None]) -> contextlib.AbstractContextManager[None]:
        """Hold while waiting between `try_choose` calls: checks run back to back, and
        `changed` is called (from the monitor's thread) whenever it is worth asking again."""
        return self._topology.waiting(changed)

    def no_host(self, read_only: bool) -> NoHostAvailableError:
        """The error for a caller that found no host within `acquire_timeout`."""
        what, _ = self._route(read_only)
        return NoHostAvailableError(
            f"no {what} available within {self._acquire_timeout:g}s; "
            f"hosts: {self._topology.describe()}"
        )

    @property
    def acquire_timeout(self) -> float:
        """Seconds a connect may wait for a host of its role."""
        return self._acquire_timeout

    def open_failed(
        self,
        host: HostState,
        exc: Exception,
        read_only: bool,
        deadline: float,
        judge: ErrorJudge | None = None,
    ) -> None:
        """Opening a connection to the chosen `host` raised `exc`: re-raises it when it
        names our settings, raises NoHostAvailableError past `deadline` (time.monotonic),
        else returns so that the caller picks again. `judge`: who tells the errors of the
        connection's library apart (by default, the host driver)."""
        judge = judge or self._driver
        topology = self._topology
        if judge.is_configuration_error(exc):
            topology.opened(host, None)
            raise exc  # a wrong password or option: the driver's own error says which
        # It was fine at the last check but not now: distrust it, back off from it and pick
        # again. A primary whose new session cannot write has changed role: its connections
        # are unfit at once, as after a write refused as read-only.
        why = judge.describe_error(exc)
        demoted = not read_only and judge.is_read_only_violation(exc)
        topology.open_failed(host, why, role_changed=demoted)
        if time.monotonic() >= deadline:
            what, _ = self._route(read_only)
            raise NoHostAvailableError(
                f"no {what} could be connected to within {self._acquire_timeout:g}s "
                f"(last error on {host.address}: {why}); hosts: {topology.describe()}"
            ) from None

    def forget_choice(self, host: HostState) -> None:
        """End a choice whose open was abandoned (its caller cancelled), blaming nobody."""
        self._topology.opened(host, None)

    @property
    def host_driver(self) -> HostDriver:
        """How one host is talked to (qdbpool.drivers)."""
        return self._driver

    def forget(self, conn: Any) -> None:
        """`conn` is being closed: it no longer counts on its host."""
        tag = self._tags.pop(conn, None)
        if tag is not None:
            self._topology.forget(tag.host, conn)

    def adopt(
        self,
        conn: Any,
        choice: Choice,
        read_only: bool,
        sever: Callable[[Any], None] | None = None,
    ) -> None:
        """`conn`, just opened to the chosen host, is tagged with its generation. `sever`:
        how to shut its socket down if the host stops answering, for a connection of
        another library than the host driver's (see Topology.opened)."""
        host, generation, roles_generation = choice
        topology = self._topology
        if read_only and host.role is Role.PRIMARY:
            # A read on the primary (for want of a replica, or by master_as_replica_weight)
            # is reconsidered as soon as any host changes role, e.g. a replica comes up.
            tag = _Tag(host, topology.roles_changed, roles_generation, read_only)
        else:
            tag = _Tag(host, host.generation, generation, read_only)
        self._tags[conn] = tag
        topology.opened(host, conn, sever)

    def generation_of(self, conn: Any) -> tuple[Generation, int]:
        # The pool compares this at every checkout: a role change of the host (or the host
        # found down or suspect) makes the connection unfit, with no I/O.
        tag = self._tags[conn]
        return tag.watched, tag.generation

    def is_usable(self, conn: Any) -> bool:
        tag = self._tags.get(conn)
        return tag is not None and tag.current and self._driver.is_open(conn)

    def is_disconnect(self, conn: Any, exc: BaseException, judge: ErrorJudge | None = None) -> bool:
        judge = judge or self._driver
        tag = self._tags.get(conn)
        if judge.is_connection_lost(conn, exc):
            if tag is not None:
                self._topology.suspect(tag.host, type(exc).__name__)
            return True
        if tag is not None and not tag.read_only and judge.is_read_only_violation(exc):
            # A write refused as read-only on a primary connection: the host was demoted.
            self._topology.suspect(tag.host, "it refused a write as read-only", role_changed=True)
            return True
        return tag is None or not tag.current

    def reset(self, conn: Any) -> None:
        self._driver.reset(conn)

    def ping(self, conn: Any) -> None:
        self._driver.ping(conn)

    def cancel_sender(self, conn: Any) -> Callable[[], None] | None:
        """The host driver's way to ask `conn`'s server to stop its statement (see
        HostDriver.cancel_sender): None when the driver has none, or `conn` is not ours."""
        tag = self._tags.get(conn)
        return None if tag is None else self._driver.cancel_sender(conn, tag.host.address)

    def interrupt(self, conn: Any) -> None:
        # The server is asked to stop the statement (a cancel request, KILL QUERY): without
        # it, a query whose client went away runs on to its end. Then shutdown(2) on the
        # socket, so that a read blocked in the driver returns and raises at once.
        tag = self._tags.get(conn)
        if tag is not None:
            self._driver.cancel(conn, tag.host.address)
        self._driver.sever(conn)

    def describe(self, conn: Any) -> str:
        # psycopg2's repr shows the DSN with `password` masked, but not `sslpassword`.
        return Redactor(self._driver.secrets)(repr(conn))

    def close_connection(self, conn: Any) -> None:
        self.forget(conn)
        self._driver.close(conn)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Hosts changing role and failovers, as the monitor finds them (qdbpool.events)."""
        return self._topology.events.add(listener)

    def close(self) -> None:
        """Stop the monitor and close its probes. A factory used again afterwards (a new
        pool over it, e.g. `initialize(factory)` a second time) starts afresh, every host
        unknown until checked; callers waiting for a host when it closes get an error."""
        self._topology.close()

    def after_fork_in_child(self) -> None:
        self._tags = weakref.WeakKeyDictionary()
