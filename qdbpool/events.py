"""Pool events: what happened to connections and hosts, for whoever subscribes.

`pool.subscribe(listener)` calls `listener(event)` for each event below, from the thread
where it happened (a checkout's, a release's, the cluster monitor's). Events are rare by
design: nothing is emitted on the fast path of a checkout (those are counted in `stats()`),
only when a connection is opened or closed, a caller had to wait, or a host changed role.
`qdbpool.metrics` is built on this hook.

A listener must be quick and must not block: it runs inside the pool's own work (never
under its lock). An exception it raises is logged and otherwise ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from qdbpool.drivers.base import Role
from qdbpool.dsn import HostPort
from qdbpool.errors import ArgumentTypeError

logger = logging.getLogger("qdbpool")

CloseReason = Literal[
    # Discarded: found unfit and replaced (counted in PoolStats.discarded).
    "stale",  # the factory made it unfit: its host changed role (a failover, a demotion)
    "expired",  # older than max_lifetime, or idle longer than max_idle
    "ping_failed",  # pre_ping's round trip failed
    "broken",  # the driver reports it closed or broken
    "disconnect",  # the code using it raised an error that means the connection is lost
    "reset_failed",  # rolling it back (or the reset hook) failed or left a transaction
    "abandoned",  # a checkout was garbage collected without being released
    # Closed without blame.
    "pool_closed",  # the pool closed
    "thread_ended",  # SingletonPool: the thread holding it ended
    "burst_idle",  # BoundedPool: a connection beyond `size`, idle and not needed
    "route_traded",  # BoundedPool: its capacity went to a caller of the other route
]

#: The reasons that count as discards: the connection was unfit, not merely no longer needed.
DISCARD_REASONS: frozenset[str] = frozenset(
    {"stale", "expired", "ping_failed", "broken", "disconnect", "reset_failed", "abandoned"}
)


@dataclass(frozen=True)
class ConnectionOpened:
    """A pool opened a new connection and it passed its first checks."""

    pool: Any
    """The pool (a `Pool`)."""
    read_only: bool
    """Whether it was opened for reads (routed to a replica by factories that route)."""
    seconds: float
    """How long opening and checking it took."""


@dataclass(frozen=True)
class ConnectionClosed:
    """A pool closed a connection for good."""

    pool: Any
    """The pool (a `Pool`)."""
    reason: CloseReason
    """Why (see `CloseReason`)."""

    @property
    def discarded(self) -> bool:
        """Whether it was found unfit (and so replaced), rather than no longer needed."""
        return self.reason in DISCARD_REASONS


@dataclass(frozen=True)
class CheckoutWaited:
    """A caller waited in line for a connection (BoundedPool, all connections in use)."""

    pool: Any
    """The pool (a `BoundedPool`)."""
    seconds: float
    """How long it waited."""
    timed_out: bool
    """Whether it gave up (PoolTimeoutError) rather than got a connection."""


@dataclass(frozen=True)
class HostRoleChanged:
    """A routing factory's monitor found a host in a new role."""

    host: HostPort
    """The host and port."""
    old: Role
    """Its role before."""
    new: Role
    """Its role now."""


@dataclass(frozen=True)
class FailoverObserved:
    """A host became the primary while another one was the last primary seen."""

    old_primary: HostPort
    """The primary before."""
    new_primary: HostPort
    """The primary now."""


Event = ConnectionOpened | ConnectionClosed | CheckoutWaited | HostRoleChanged | FailoverObserved
Listener = Callable[[Event], object]


class Listeners:
    """A set of listeners, safe to change while events are being delivered.

    Delivery reads one tuple, which is replaced (never changed) on subscribe/unsubscribe:
    no lock on the way out, and `bool(listeners)` is one attribute read for the emitter.
    """

    def __init__(self) -> None:
        self._all: tuple[Listener, ...] = ()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._all)

    def add(self, listener: Listener) -> Callable[[], None]:
        """Add `listener`; returns the function that removes it (harmless to call twice)."""
        if not callable(listener):
            raise ArgumentTypeError(f"a listener must be callable, not {type(listener).__name__}")
        with self._lock:
            self._all = (*self._all, listener)
        removed = False

        def unsubscribe() -> None:
            nonlocal removed
            with self._lock:
                # Once only: the same callable may be subscribed again, and that
                # subscription is not this one's to end.
                if removed:
                    return
                removed = True
                i = next(i for i, x in enumerate(self._all) if x is listener)
                self._all = self._all[:i] + self._all[i + 1 :]

        return unsubscribe

    def emit(self, event: Event) -> None:
        for listener in self._all:
            try:
                listener(event)
            except Exception:
                logger.exception("a qdbpool event listener raised (ignored)")
