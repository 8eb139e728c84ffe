"""BoundedPool: many threads over few connections.

`size` connections serve the steady load; under a burst up to `max_size` are opened, and
the extra ones are closed once they have been idle `burst_idle` seconds. A caller that
finds every connection busy waits, in arrival order, up to `timeout` seconds: a released
connection (or the capacity of a discarded one) is handed straight to the longest waiter,
so nobody polls and nobody jumps the queue. A connection is never closed while in use,
and one lost to an error gives its capacity back at once.

`_checkout` and `_checkin` settle the usual case (an idle connection, nobody waiting, no
burst connections to age out, nothing timed to check) with one short hold of the lock each
way; anything else goes to their slow twins, `_checkout_checked` and `_checkin_checked`.

Validation, lifetime, pre-ping, hooks, stats, close and fork rules are Pool's.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from qdbpool import validation
from qdbpool.errors import ConfigurationError, PoolClosedError, PoolTimeoutError
from qdbpool.events import CheckoutWaited
from qdbpool.pool import Pool
from qdbpool.pooled import PooledConnection
from qdbpool.protocol import Connection, ConnectionFactory
from qdbpool.route_trades import TRADE_AFTER, LineWaiter, RouteTrades

_CAPACITY = "capacity"  # a waiter was given room to open a connection of its own
_CLOSED = "closed"  # the pool closed while it waited


class _Waiter(LineWaiter[str]):
    __slots__ = ("event", "granted", "traded")

    def __init__(self, route: str) -> None:
        super().__init__(route)
        self.event = threading.Event()
        self.granted: PooledConnection | str | None = None
        # The other route's idle connection it traded in (see _trade_for), until retired.
        self.traded: PooledConnection | None = None


class BoundedPool(Pool):
    """A shared pool: `connect()` hands out an idle connection, or opens one while fewer
    than `size` exist (up to `max_size` under load), or waits up to `timeout` seconds and
    then raises PoolTimeoutError. Nested `@with_conn` calls in one thread reuse the
    connection that thread already has checked out.

    Args:
        get_conn: As for `Pool`: a callable or a factory (without it, `quasardb.Cluster`).
        size: Connections for the steady load.
        max_size: Connections at most, under a burst (default: `size`).
        pre_create: Connections opened when the pool is made (at most `size`).
        timeout: Seconds a checkout may take before `PoolTimeoutError`: waiting in line
            for a connection, or retrying a server whose new connections fail (then the
            error's `__cause__` is the last failure).
        burst_idle: Seconds of idleness after which a connection beyond `size` is closed
            (at a later checkout or release).
        **pool_kwargs: The options of `Pool`: `pre_ping`, `max_lifetime`, `max_idle`,
            `configure`, `reset` (or, without `get_conn`, `quasardb.Cluster` arguments).

    Raises:
        ConfigurationError: A size or a number of seconds is out of range (a ValueError).
    """

    def __init__(
        self,
        get_conn: Callable[[], Connection] | ConnectionFactory | None = None,
        *,
        size: int = 4,
        max_size: int | None = None,
        pre_create: int = 0,
        timeout: float = 30.0,
        burst_idle: float = 10.0,
        **pool_kwargs: Any,
    ) -> None:
        self._size = validation.count("size", size, 1)
        self._max_size = (
            self._size if max_size is None else validation.count("max_size", max_size, 1)
        )
        if self._max_size < self._size:
            raise ConfigurationError(f"max_size ({max_size}) must be >= size ({size})")
        pre_create = validation.count("pre_create", pre_create, 0)
        if pre_create > self._size:
            raise ConfigurationError(f"pre_create ({pre_create}) must be <= size ({size})")
        self._burst_idle = validation.seconds("burst_idle", burst_idle)
        self._timeout = validation.seconds("timeout", timeout)
        super().__init__(get_conn, **pool_kwargs)
        try:
            for _ in range(pre_create):
                with self._lock:
                    self._reserve_locked("rw")
                pooled = self._open_reserved(read_only=False)
                pooled.depth = 0
                self._give_back(pooled)
        except BaseException:
            # Nobody gets this pool to close: what it opened must not outlive it, nor may it
            # keep counting as a user of its factory (which would then never be closed).
            self.close(timeout=0)
            raise

    def _init_state(self) -> None:
        super()._init_state()
        self._idle: dict[str, deque[PooledConnection]] = {"rw": deque(), "ro": deque()}
        self._waiters: deque[_Waiter] = deque()
        self._reserved = 0  # connections open or being opened: what counts against max_size
        # By route, capacity reserved for a connection not open yet: granted to a caller
        # that has still to open it, or being opened.
        self._opening = {"rw": 0, "ro": 0}
        self._trades: RouteTrades[str] = RouteTrades("rw", "ro")
        self._timeouts = 0

    @property
    def size(self) -> int:
        """Connections for the steady load."""
        return self._size

    @property
    def max_size(self) -> int:
        """Connections at most, under a burst."""
        return self._max_size

    # -- checkout ------------------------------------------------------------------------

    def _checkout(self, read_only: bool) -> PooledConnection:
        route = "ro" if read_only and self._routes else "rw"
        held: PooledConnection | None = getattr(self._local, route, None)
        idle = self._idle[route]
        # The usual case: no nested checkout, an idle connection, nobody waiting, no burst
        # connections to age out, nothing timed to check. Looked at without the lock first,
        # then taken under it, as _acquire takes one; anything else is its slow twin's. (A
        # burst begun in between is aged out at the next checkout or release: no need to
        # look again under the lock.)
        if (
            (held is None or not held.depth)
            and idle
            and not (self._waiters or self._timed)
            and self._reserved <= self._size
        ):
            pooled: PooledConnection | None = None
            with self._lock:
                if idle and not (self._waiters or self._closed):
                    pooled = idle.pop()
                    pooled.depth = 1  # in use from here on: close() must leave it to us
            if pooled is not None:
                if pooled.watched.value == pooled.generation:
                    pooled.checkouts += 1
                    pooled.owner = threading.get_ident()
                    if held is not pooled:
                        setattr(self._local, route, pooled)
                    return pooled
                self._retire(pooled, "stale")
        return self._checkout_checked(route, read_only, held)

    def _checkout_checked(
        self, route: str, read_only: bool, held: PooledConnection | None
    ) -> PooledConnection:
        """_checkout's slow twin: a nested checkout, waiting, opening, a connection to check."""
        if held is not None and held.depth > 0:
            # Decided under the lock: a wrapper of it that this thread leaked may be released
            # by the garbage collector in another thread right now (_release_dropped).
            with self._lock:
                nested = held.depth > 0 and not held.closed and held.owner == threading.get_ident()
                if nested:
                    held.depth += 1  # a nested call in this thread: share what it holds
            if nested:
                # Liveness again, as in a SingletonPool: the outer use may have broken it
                # (the server ended the session, the code closed it).
                if self._is_usable(held.raw):
                    held.checkouts += 1
                    return held
                with self._lock:
                    held.depth -= 1
                self._retire(held, "broken")  # the outer use finds it closed at its release
        self._refuse_reentry(route == "ro")  # before it waits for what its opening holds
        deadline = time.monotonic() + self._timeout  # read once: it bounds the retries too
        while True:
            pooled, fresh = self._acquire(route, read_only, deadline)
            if fresh:  # a new connection was checked as it was opened
                break
            if pooled.watched.value != pooled.generation:
                self._retire(pooled, "stale")
                continue
            unfit = self._unfit_reason(pooled) if self._timed else None
            if unfit is None:
                break
            self._retire(pooled, unfit)
        pooled.depth = 1
        pooled.checkouts += 1
        pooled.owner = threading.get_ident()
        if held is not pooled:
            setattr(self._local, route, pooled)
        return pooled

    def _acquire(
        self, route: str, read_only: bool, deadline: float
    ) -> tuple[PooledConnection, bool]:
        """An idle connection, a new one, or one handed over after waiting in line; and
        whether it is new."""
        found: PooledConnection | None = None
        surplus: PooledConnection | None = None
        waiter: _Waiter | None = None
        with self._lock:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            idle, other_idle = self._idle[route], self._idle[self._trades.other(route)]
            if self._waiters and any(w.route == route for w in self._waiters):
                waiter = self._enqueue_locked(route)  # others were first: no overtaking
            elif idle:
                found = idle.pop()  # the most recently used: the extras age out instead
                found.depth = 1  # in use from here on: close() must leave it to us
            elif self._reserved < self._max_size:
                self._reserve_locked(route)
            elif other_idle and not any(self._route_of(p) == route for p in self._live):
                # Full, idle on the other route only, and none of ours exists to come back:
                # trade that one in (its retirement gives back the capacity reserved here).
                # Where one of ours exists, wait for it rather than churn connections.
                surplus = other_idle.popleft()
                self._reserve_locked(route)
            else:
                waiter = self._enqueue_locked(route)
            if waiter is not None:
                # The lock is re-entrant: the cycle collector, run by any allocation above,
                # may have released a leaked connection in this thread after we found none,
                # before our waiter was in line to be handed it (its finalizer, when no
                # thread could be started to do it outside the lock: Pool._from_finalizer).
                self._serve_line_locked()
            # Burst connections idle too long are closed only after ours is taken: this
            # checkout is the demand that one of them would otherwise be opened again for.
            expired = self._take_expired_burst_locked() if self._reserved > self._size else None
        if expired:
            self._retire_burst(expired)  # may hand their capacity to our waiter
        if surplus is not None:
            self._retire(surplus, "route_traded")
        if found is not None:
            return found, False
        if waiter is None:
            return self._open_reserved(read_only, deadline), True
        granted = self._wait(waiter, deadline)
        if isinstance(granted, PooledConnection):
            return granted, False
        return self._open_reserved(read_only, deadline), True  # granted capacity: open our own

    def _enqueue_locked(self, route: str) -> _Waiter:
        waiter = _Waiter(route)
        self._waiters.append(waiter)
        return waiter

    def _serve_line_locked(self) -> None:
        """Hand what is free to the line, first come first served: an idle connection of
        a waiter's route, then capacity."""
        for waiter in list(self._waiters):
            idle = self._idle[waiter.route]
            if idle:
                self._hand_over_locked(waiter, idle.pop())
        self._grant_capacity_locked()

    def _hand_over_locked(self, waiter: _Waiter, pooled: PooledConnection) -> None:
        """`pooled`, straight to `waiter`, who leaves the line with it."""
        self._waiters.remove(waiter)
        pooled.depth = 1  # in use by the waiter from here on (see close())
        waiter.granted = pooled
        waiter.event.set()

    def _wait(self, waiter: _Waiter, deadline: float) -> PooledConnection | str:
        started = time.monotonic()
        try:
            granted = self._wait_in_line(waiter, deadline)
        except PoolTimeoutError:
            if self._events:
                self._events.emit(CheckoutWaited(self, time.monotonic() - started, True))
            raise
        if self._events:
            self._events.emit(CheckoutWaited(self, time.monotonic() - started, False))
        return granted

    def _wait_in_line(self, waiter: _Waiter, deadline: float) -> PooledConnection | str:
        try:
            patience = min(deadline, time.monotonic() + TRADE_AFTER)
            if not waiter.event.wait(max(patience - time.monotonic(), 0.0)):
                traded = self._trade_for(waiter)
                if traded is not None:
                    self._retire(traded, "route_traded")
                    waiter.traded = None
                    return _CAPACITY
                waiter.event.wait(max(deadline - time.monotonic(), 0.0))
        except BaseException:
            self._leave_line(waiter)  # e.g. KeyboardInterrupt, or a signal handler raising
            raise
        with self._lock:
            granted = waiter.granted
            if granted is None:  # timed out, and nobody served us in the meantime
                self._waiters.remove(waiter)
                self._timeouts += 1
                in_use = sum(1 for p in self._live if p.depth > 0)
                timed_out = PoolTimeoutError(
                    f"no connection available within {self._timeout:g}s: {in_use} of "
                    f"{self._max_size} in use, {len(self._waiters)} other caller(s) waiting"
                )
        if granted is None:
            raise timed_out
        if granted == _CLOSED:
            raise PoolClosedError("the pool closed while waiting for a connection")
        return granted

    def _leave_line(self, waiter: _Waiter) -> None:
        """A waiter interrupted by an exception: out of the line, and what it was handed
        meanwhile back to the pool, for the next in line."""
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            granted, waiter.granted = waiter.granted, _CLOSED
            traded, waiter.traded = waiter.traded, None
            if granted == _CAPACITY:
                self._reserved -= 1
                self._opening[waiter.route] -= 1
                self._grant_capacity_locked()
        if traded is not None:
            self._retire(traded, "route_traded")  # taken off the idle list for us
        if isinstance(granted, PooledConnection):
            self._give_back(granted)

    def _trade_for(self, waiter: _Waiter) -> PooledConnection | None:
        """A waiter not served within TRADE_AFTER: an idle connection of the other route,
        taken off the idle list for retirement (its capacity becomes the waiter's), if any."""
        with self._lock:
            other_idle = self._idle[self._trades.other(waiter.route)]
            if waiter.granted is not None or waiter.promised or self._closed:
                return None  # served, or a trade of _give_back's is on its way to it
            if not other_idle:
                waiter.impatient = True  # see route_trades
                return None
            self._waiters.remove(waiter)
            self._reserve_locked(waiter.route)  # given back when the traded one is closed
            waiter.granted = _CAPACITY  # ours, until we open with it (see _leave_line)
            traded = waiter.traded = other_idle.popleft()
            return traded

    def _open_reserved(self, read_only: bool, deadline: float | None = None) -> PooledConnection:
        """Open a connection for capacity already reserved; give it back if that fails."""
        route = "ro" if read_only and self._routes else "rw"
        try:
            return self._open(read_only, deadline)
        except BaseException:
            with self._lock:
                self._reserved -= 1
                self._grant_capacity_locked()
            raise
        finally:
            with self._lock:
                self._opening[route] -= 1  # open (in _live) or failed

    def _reserve_locked(self, route: str) -> None:
        """Capacity for a connection of `route` that its caller opens (`_open_reserved`)."""
        self._reserved += 1
        self._opening[route] += 1

    # -- release -------------------------------------------------------------------------

    def _checkin(self, pooled: PooledConnection) -> None:
        # The usual case: the outermost checkout, clean for certain by the factory's
        # cheapest look, nobody waiting, no burst connections to age out: idle again. Else
        # its slow twin's, which also takes a closed connection (the pool's, or one closed
        # under a fork or close(timeout)): that one is not looked at at all.
        if (
            pooled.depth == 1
            and not (self._full_release or self._waiters or pooled.closed)
            and self._reserved <= self._size
        ):
            try:
                dirty = self._after_use_hint(pooled.raw)
            except Exception:
                dirty = True
            if not dirty:
                pooled.last_used = time.monotonic()  # burst connections age by it
                pooled.owner = 0  # no thread's: a slot still pointing here is no nested checkout
                with self._lock:
                    # A burst begun since is aged out at a later checkout or release.
                    if not (self._waiters or self._closed or pooled.closed):
                        pooled.depth = 0  # idle, under the lock that _acquire takes it with
                        # _route_of(pooled), inlined: the call costs 4% of a checkout here.
                        self._idle["ro" if pooled.read_only and self._routes else "rw"].append(
                            pooled
                        )
                        return
        self._checkin_checked(pooled)

    def _checkin_checked(self, pooled: PooledConnection) -> None:
        """_checkin's slow twin: a nested checkout, a connection to look at properly, a
        waiter to hand it to, a burst, a closed pool."""
        if pooled.depth > 1:
            with self._lock:  # see _release_dropped
                if pooled.depth > 1:
                    pooled.depth -= 1  # an outer call in this thread still uses it
                    return
        # The thread's slot keeps pointing here (rewriting a thread-local costs more than
        # the rest of a release): `owner`, cleared by _give_back, tells a nested checkout.
        # It stays marked in use (depth 1) until _give_back decides, under the lock, whether
        # it goes idle or straight to a waiter: close() leaves it alone meanwhile.
        if pooled.closed or self._closed:
            pooled.depth = 0
            self._retire(pooled, "pool_closed")
            return
        if not self._after_use(pooled):
            pooled.depth = 0
            return  # dropped
        pooled.last_used = time.monotonic()  # always: burst connections age by it
        self._give_back(pooled)

    def _give_back(self, pooled: PooledConnection) -> None:
        """A connection just released: to the longest waiter for its route, else idle; or
        its capacity (it is closed) to a waiter of the other route (see route_trades)."""
        route = self._route_of(pooled)
        expired: list[PooledConnection] | None = None
        trade = False
        pooled.owner = 0  # no thread's: a slot still pointing here is no nested checkout
        with self._lock:
            if self._closed:
                trade = True
            else:
                waiter = (
                    self._trades.first_served(self._waiters, route, self._route_count_locked)
                    if self._waiters
                    else None
                )
                if waiter is not None:
                    if waiter.route != route:
                        # Its capacity is granted once it is closed (see _after_retire).
                        self._trades.trade(self._waiters, waiter)
                        trade = True
                    else:
                        self._hand_over_locked(waiter, pooled)  # to the longest waiter
                        return
                if not trade:
                    pooled.depth = 0  # idle, under the lock that _acquire takes it with
                    self._idle[route].append(pooled)
                    if self._reserved > self._size:
                        expired = self._take_expired_burst_locked()
        if not trade:
            if expired:
                self._retire_burst(expired)
            return
        pooled.depth = 0
        # Its capacity goes to that waiter.
        self._retire(pooled, "pool_closed" if self._closed else "route_traded")

    def _route_count_locked(self, route: str) -> int:
        """Connections of `route` open or being opened."""
        return self._opening[route] + sum(1 for p in self._live if self._route_of(p) == route)

    def _release_dropped(self, pooled: PooledConnection) -> None:
        # A leaked wrapper's checkout, ended by the garbage collector, maybe in another
        # thread than the one that holds it. That thread may be nesting on the same
        # connection at this moment: decided under the lock, as its nested checkouts are.
        with self._lock:
            if pooled.depth > 1:
                pooled.depth -= 1  # its thread still uses it: its own release ends it
                return
            pooled.owner = 0  # from here on, that thread cannot nest on it
        self._checkin(pooled)

    def _route_of(self, pooled: PooledConnection) -> str:
        return "ro" if pooled.read_only and self._routes else "rw"

    # -- capacity bookkeeping (under the lock) --------------------------------------------

    def _forget(self, pooled: PooledConnection, *, from_finalizer: bool) -> None:
        super()._forget(pooled, from_finalizer=from_finalizer)
        for idle in self._idle.values():
            if pooled in idle:
                idle.remove(pooled)

    def _after_retire(self) -> None:
        # Only now that the driver connection is closed may a waiter open another.
        with self._lock:
            self._reserved -= 1
            self._grant_capacity_locked()

    def _grant_capacity_locked(self) -> None:
        if self._waiters and self._reserved < self._max_size and not self._closed:
            waiter = self._waiters.popleft()
            self._reserve_locked(waiter.route)
            waiter.granted = _CAPACITY
            waiter.event.set()

    def _take_expired_burst_locked(self) -> list[PooledConnection]:
        """Burst connections idle long enough, oldest first, taken off the idle lists.

        Called only while burst connections exist (the callers look first: the usual case
        costs no call). The caller retires them once it has let go of the lock (closing is
        I/O); until then they still count against max_size, which errs on the safe side."""
        victims: list[PooledConnection] = []
        now = time.monotonic()
        for idle in self._idle.values():
            while (
                idle
                and self._reserved - len(victims) > self._size
                and now - idle[0].last_used > self._burst_idle
            ):
                victims.append(idle.popleft())
        return victims

    def _retire_burst(self, victims: list[PooledConnection]) -> None:
        for victim in victims:
            self._retire(victim, "burst_idle")

    def _on_close(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = _CLOSED
            waiter.event.set()

    def _extra_stats(self) -> dict[str, int]:
        return {"waiting": len(self._waiters), "timeouts": self._timeouts}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<BoundedPool {state} size={self._size} max_size={self._max_size} "
            f"factory={self._factory!r}>"
        )
