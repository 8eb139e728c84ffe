"""BoundedPool for asyncio: many tasks over few connections.

The class carries the threaded `qdbpool.BoundedPool`'s name because it is that strategy:
a shared pool, `size` connections for the steady load and up to `burst_limit` under a
burst, callers waiting in line (FIFO) and served directly by the next release. The other
threaded strategy, `SingletonPool` (a connection per thread, kept between calls), has no
asyncio counterpart: tasks are many and short-lived (often one per request), so a
connection per task would be a connection per request. So there is one asyncio pool, and
code moving from threads keeps the name of the pool it was sharing.

Everything happens on the event loop the pool serves, so there is no lock: the pool's
state changes only between two awaits. A checkout of an idle connection that needs no
ping takes no lock and does not yield to the event loop; neither does the release of a
connection that comes back clean.

Cancellation never leaks capacity. The work a cancelled caller leaves behind (a
connection being opened, a ping, the reset after a use) goes on in a task of the pool's
own, whose outcome goes back to the pool: a new connection to the next caller, a failed
one's capacity to the next waiter. A connection whose holder was cancelled, or raised, is
reset (rolled back) before anyone else gets it, or closed if its factory says a cancelled
operation leaves it unknowable (`ConnectionFactory.cancel_safe`); then the factory's
`close_interrupted` may stop that operation on the server first, and the capacity comes
back once it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from qdbpool import validation
from qdbpool.aio.errors import WrongEventLoopError
from qdbpool.aio.protocol import (
    CLEAN,
    LOST,
    Connection,
    ConnectionFactory,
    as_factory,
    maybe_await,
)
from qdbpool.errors import ArgumentTypeError, ConfigurationError, PoolClosedError, PoolTimeoutError
from qdbpool.route_trades import TRADE_AFTER, LineWaiter, RouteTrades
from qdbpool.stats import PoolStats

logger = logging.getLogger("qdbpool")

Hook = Callable[[Connection], object]
"""A `configure` or `reset` hook: called with the driver's connection; may be `async`."""

_numbers = itertools.count(1)


class _Grant:
    """What a waiter is woken with, when it is not a connection."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_CAPACITY = _Grant("capacity")  # room to open a connection of its own (already reserved)
_TIMEOUT = _Grant("timeout")
_CLOSED = _Grant("closed")

_TIMER_SLACK = 0.001  # seconds a loop's timer may fire before its time (uvloop: 1 ms)

# What a no-I/O look at an idle connection decides.
_FIT, _UNFIT, _PING = 0, 1, 2

# A use that ends with one of these was interrupted like a cancelled one (asyncio.timeout
# cancels the body, then raises TimeoutError; asyncio's own class is another before 3.11).
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


_CHAIN_LIMIT = 64  # exceptions looked at, at most, in one use's chain (see _interrupted)


def _interrupted(exc: BaseException) -> bool:
    """Whether a use that raised `exc` may have been cut short in the middle of who knows
    what, so that an operation may still be running on the connection: cancelled, or
    stopped by KeyboardInterrupt and the like; timed out (asyncio.timeout cancels, then
    raises TimeoutError); or raising while it handled any of these, at any depth (a
    TaskGroup whose sibling failed cancels the body, then raises an ExceptionGroup; a body
    may turn a timeout into an error of its own). The chain cannot tell a timeout of the
    connection's statement from one of other work: both count, the safe way."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < _CHAIN_LIMIT:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _TIMEOUTS) or not isinstance(current, Exception):
            return True
        pending.extend(getattr(current, "exceptions", ()))  # an exception group's
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


class _Conn:
    """The pool's record of one open connection; `ro`: opened for reads (a replica's)."""

    __slots__ = (
        "born",
        "ended",
        "generation",
        "last_used",
        "nested",
        "owner",
        "raw",
        "ro",
        "watched",
    )

    def __init__(self, raw: Connection, born: float, generation: tuple[Any, int], ro: bool) -> None:
        self.raw = raw
        self.ro = ro
        self.born = self.last_used = born
        self.watched, self.generation = generation
        self.owner: asyncio.Task[Any] | None = None  # the task holding it; None while idle
        # Checkouts nested in the one that took it from the pool, not ended yet; and, when
        # that one ended first (see _Checkout.__aexit__), how it ended.
        self.nested = 0
        self.ended: _Ending | None = None


class _Ending:
    """How an outermost checkout ended while checkouts nested in it were still in use:
    the last of them gives the connection back, as it would have (`exc`)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


class _Waiter(LineWaiter[bool]):
    """A caller waiting in line for a connection of its route (`route`: read-only or not),
    or capacity, until `deadline` (the loop's clock)."""

    __slots__ = ("deadline", "future", "trade")

    def __init__(self, future: asyncio.Future[_Conn | _Grant], ro: bool, deadline: float) -> None:
        super().__init__(ro)
        self.future = future
        self.deadline = deadline
        self.trade: asyncio.TimerHandle | None = None

    def gone(self) -> bool:
        return self.future.done()  # cancelled or timed out, and not removed yet


class _Held:
    """The value of a pool's context variable while a task holds one of its connections:
    nested checkouts in that task share it. A task created meanwhile inherits the value
    with its copy of the context, and sees `task` is not itself."""

    __slots__ = ("conn", "task")

    def __init__(self, conn: _Conn, task: asyncio.Task[Any] | None) -> None:
        self.conn = conn
        self.task = task


def _check_pre_ping(value: object) -> float | None:
    if value is False or value is None:
        return None
    if value is True:
        return 0.0
    try:
        return validation.seconds("pre_ping", value, zero_ok=True)
    except ConfigurationError:
        raise ConfigurationError(
            f"pre_ping must be True, False or a number of seconds >= 0, not {value!r}"
        ) from None


class BoundedPool:
    """An asyncio pool: `connect()` hands out an idle connection, or opens one while fewer
    than `size` are open (up to `burst_limit` while callers would otherwise wait), or waits
    in line up to `timeout` seconds and then raises `PoolTimeoutError`. A connection beyond
    `size` is closed as soon as it comes back with nobody waiting for it.

    Nested checkouts in one task (`connect()` or `@with_conn` inside another) share the
    task's connection; a task never shares one with another task, its children included.

    Over a factory that routes reads (`routes_reads`, e.g. `qdbpool.aio.factories.
    Postgres`), `connect(read_only=True)` gets a connection of the reads' route (a
    replica's) and a task may hold one of each at once, as in the threaded pools. The two
    routes share `size` and `burst_limit`: a caller left waiting `TRADE_AFTER` seconds while
    only the other route has idle connections has one of them closed to open its own; with
    none idle, it gets, once first in line, the capacity of the next connection of the
    other route to come back.

    The pool serves the event loop it was made on (or, if made outside one, the loop it is
    first used on); used from another, it raises `WrongEventLoopError`.

    Args:
        get_conn: A factory from `qdbpool.aio.factories`, any `qdbpool.aio.protocol.
            ConnectionFactory`, or a zero-argument `async def` returning a connection.
        size: Connections for the steady load.
        burst_limit: Connections at most, under a burst (default: `size`).
        pre_create: Connections opened by `open()` (which `initialize` and `async with`
            call), at most `size`.
        timeout: Seconds a checkout may take, waiting in line and opening included, before
            `PoolTimeoutError`.
        pre_ping: False (never), True (a round trip for every new connection and at every
            checkout), or seconds: a round trip only when the connection was idle that long.
        max_lifetime: Seconds after which a connection is replaced at its next checkout.
        max_idle: Seconds of idleness after which a connection is replaced at checkout.
        configure: Called (and awaited if it is a coroutine function) with each new
            connection, before its first use.
        reset: Called (and awaited, likewise) each time an outermost use ends, after the
            factory's own reset; a connection it leaves unclean is closed.

    Raises:
        ConfigurationError: A size or a number of seconds is out of range (a ValueError).
        ArgumentTypeError: `get_conn` or a hook cannot be called (also a TypeError).
    """

    def __init__(
        self,
        get_conn: ConnectionFactory | Callable[[], Awaitable[Connection]],
        *,
        size: int = 4,
        burst_limit: int | None = None,
        pre_create: int = 0,
        timeout: float = 30.0,
        pre_ping: bool | float = False,
        max_lifetime: float | None = None,
        max_idle: float | None = None,
        configure: Hook | None = None,
        reset: Hook | None = None,
    ) -> None:
        self._size = validation.count("size", size, 1)
        self._burst_limit = (
            self._size if burst_limit is None else validation.count("burst_limit", burst_limit, 1)
        )
        if self._burst_limit < self._size:
            raise ConfigurationError(f"burst_limit ({burst_limit}) must be >= size ({size})")
        self._pre_create = validation.count("pre_create", pre_create, 0)
        if self._pre_create > self._size:
            raise ConfigurationError(f"pre_create ({pre_create}) must be <= size ({size})")
        self._timeout = validation.seconds("timeout", timeout)
        self._pre_ping = _check_pre_ping(pre_ping)
        self._max_lifetime = validation.optional_seconds("max_lifetime", max_lifetime)
        self._max_idle = validation.optional_seconds("max_idle", max_idle)
        for name, hook in (("configure", configure), ("reset", reset)):
            if hook is not None and not callable(hook):
                raise ArgumentTypeError(f"{name} must be callable, not {type(hook).__name__}")
        self._factory = as_factory(get_conn)
        self._configure = configure
        self._user_reset = reset
        # Whether checkouts need the clock at all.
        self._timed = (
            self._pre_ping is not None
            or self._max_lifetime is not None
            or self._max_idle is not None
        )
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # bound to the loop it is first used on
        self._routes = self._factory.routes_reads
        self._closed = False
        self._closer: asyncio.Task[Any] | None = None
        self._factory_closing: asyncio.Task[Any] | None = None  # started by close()
        self._drained: asyncio.Future[None] | None = None  # set by close(), resolved when drained
        self._idle: dict[bool, deque[_Conn]] = {False: deque(), True: deque()}  # by route
        self._in_use: set[_Conn] = set()
        self._live: set[_Conn] = set()  # open and not retired: idle or in use
        # Connections open, being opened or being closed: what counts against burst_limit.
        # Capacity comes back only once a driver connection is closed.
        self._reserved = 0
        self._waiters: deque[_Waiter] = deque()
        # By route, capacity reserved for a connection not open yet: granted to a caller
        # that has still to open it, or being opened (see _reserve).
        self._opening = {False: 0, True: 0}
        self._trades: RouteTrades[bool] = RouteTrades(False, True)
        # One timer for the whole line, due at or before its earliest deadline (see _wait).
        self._expiry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # the pool's own background work
        self._conn_types: frozenset[type] = frozenset()
        self._created = self._closed_count = self._discarded = 0
        self._checkouts = self._connect_errors = self._timeouts = 0
        number = next(_numbers)
        self._held: dict[bool, contextvars.ContextVar[_Held | None]] = {
            ro: contextvars.ContextVar(f"qdbpool.aio.held.{number}.{ro}", default=None)
            for ro in (False, True)
        }

    # -- public surface -------------------------------------------------------------------

    @property
    def factory(self) -> ConnectionFactory:
        """The factory that opens this pool's connections."""
        return self._factory

    @property
    def size(self) -> int:
        """Connections for the steady load."""
        return self._size

    @property
    def burst_limit(self) -> int:
        """Connections at most, under a burst."""
        return self._burst_limit

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def connect(self, *, read_only: bool = False) -> _Checkout:
        """`async with pool.connect() as conn:` a connection for the body, given back at
        its end (reset first if the body raised or was cancelled).

        Inside another checkout of this pool (for the same route) in the same task, the same
        connection. `read_only=True` asks a factory that routes reads for a replica; other
        factories get it passed on to `connect` and their one route serves both.
        """
        return _Checkout(self, read_only and self._routes)

    async def open(self) -> None:
        """Open the `pre_create` connections (`initialize` and `async with` call this);
        raises what opening raises."""
        loop = self._check_loop()
        deadline = loop.time() + self._timeout
        while len(self._live) < self._pre_create and self._reserved < self._burst_limit:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            self._reserve(False)
            self._give_back(await self._open(loop, deadline, False))

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting callers get `PoolClosedError`, as does every later
        checkout; idle connections are closed now, connections in use when they come back.
        Waits up to `timeout` seconds for those (the caller's own checkouts excepted) and
        for the connections being closed. Idempotent; a second call does not wait again."""
        timeout = validation.seconds("timeout", timeout, zero_ok=True)
        loop = self._check_loop()
        if not self._closed:
            await self._close_once(loop, timeout)
        closing = self._factory_closing
        if closing is None:
            return  # another close() is still waiting for connections in use: it goes on
        # Also after a first close() cancelled while it waited: the factory is closed all
        # the same (its monitor thread and sessions must not outlive the pool).
        await asyncio.shield(closing)

    async def _close_once(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._closed = True
        logger.debug("closing pool %r", self)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(_CLOSED)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for idle in self._idle.values():
            while idle:
                self._retire(idle.pop(), "the pool closed")
        self._closer = asyncio.current_task()
        self._drained = loop.create_future()
        self._check_drained()
        try:
            if not self._drained.done():
                await asyncio.wait((self._drained,), timeout=timeout)
        finally:
            self._factory_closing = self._spawn(self._factory.close(), "closing the factory")
        if self._in_use:
            logger.warning(
                "pool closed with %d connection(s) still in use; each is closed when released",
                len(self._in_use),
            )

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters (the threaded pools' `PoolStats`)."""
        return PoolStats(
            open=len(self._live),
            in_use=len(self._in_use),
            created=self._created,
            closed=self._closed_count,
            discarded=self._discarded,
            checkouts=self._checkouts,
            connect_errors=self._connect_errors,
            waiting=sum(1 for waiter in self._waiters if not waiter.future.done()),
            timeouts=self._timeouts,
        )

    async def __aenter__(self) -> BoundedPool:
        try:
            await self.open()
        except BaseException:
            await self.close(timeout=0)  # __aexit__ does not run: nothing may be left open
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<qdbpool.aio.BoundedPool {state} size={self._size} "
            f"burst_limit={self._burst_limit} factory={self._factory!r}>"
        )

    # -- checkout -------------------------------------------------------------------------

    def _check_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise WrongEventLoopError(
                "a qdbpool.aio pool is used from coroutines running on its event loop; "
                "no event loop is running here"
            ) from None
        if loop is not self._loop:
            if self._loop is not None:
                gone = " (now closed)" if self._loop.is_closed() else ""
                raise WrongEventLoopError(
                    f"this pool serves another event loop{gone}: its connections and "
                    f"waiters belong to that loop. Make one pool per event loop (e.g. "
                    f"initialize it inside the coroutine that asyncio.run runs)"
                )
            self._loop = loop
        return loop

    def _take_idle(self, task: asyncio.Task[Any] | None, ro: bool) -> _Conn | None:
        """_acquire's usual case, settled without a coroutine: an idle connection of route
        `ro`, fit as it is, taken with nobody waiting. None: `_acquire` decides."""
        idle = self._idle[ro]
        if idle and not self._waiters and not self._timed and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None  # _acquire says what is wrong
            conn = idle[-1]  # the most recently used: the others may age out
            if loop is self._loop and conn.watched.value == conn.generation:
                idle.pop()
                self._in_use.add(conn)
                return self._hand_out(conn, task)
        return None

    async def _acquire(self, task: asyncio.Task[Any] | None, ro: bool) -> _Conn:
        """A connection of route `ro` for the calling task, in use (in `_in_use`, owned by
        `task`)."""
        loop = self._check_loop()
        deadline: float | None = None
        idle = self._idle[ro]
        handed_unfit = False  # a connection handed to us failed its look: first in line again
        while True:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            waiters = self._waiters
            if idle and not (waiters and any(w.route is ro for w in waiters)):
                conn = idle.pop()  # the most recently used: the others may age out
                self._in_use.add(conn)
            elif self._reserved < self._burst_limit and not waiters:
                self._reserve(ro)
                self._make_room(ro)
                if deadline is None:
                    deadline = loop.time() + self._timeout
                return self._hand_out(await self._open(loop, deadline, ro), task)
            else:
                if deadline is None:
                    deadline = loop.time() + self._timeout
                granted = await self._wait(loop, deadline, ro, first=handed_unfit)
                if granted is None:  # capacity to open one of our own
                    return self._hand_out(await self._open(loop, deadline, ro), task)
                conn = granted
            look = self._look_before_use(conn)
            if look == _FIT:
                return self._hand_out(conn, task)
            if look == _PING:
                if deadline is None:
                    deadline = loop.time() + self._timeout
                if await self._ping(conn, loop, deadline):
                    return self._hand_out(conn, task)
            else:
                self._retire(conn, "it failed validation at checkout", discarded=True)
            handed_unfit = True

    def _hand_out(self, conn: _Conn, task: asyncio.Task[Any] | None) -> _Conn:
        conn.owner = task
        self._checkouts += 1
        return conn

    def _look_before_use(self, conn: _Conn) -> int:
        """_FIT, _UNFIT or _PING (due for a round trip), without I/O."""
        if conn.watched.value != conn.generation:
            return _UNFIT
        if not self._timed:
            return _FIT
        now = time.monotonic()
        if self._max_lifetime is not None and now - conn.born > self._max_lifetime:
            return _UNFIT
        idle = now - conn.last_used
        if self._max_idle is not None and idle > self._max_idle:
            return _UNFIT
        if self._pre_ping is not None and idle >= self._pre_ping:
            return _PING
        return _FIT

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, deadline: float, ro: bool, first: bool = False
    ) -> _Conn | None:
        """Wait in line (at its head if `first`: a caller whose turn came, but with a
        connection unfit for use): a connection of route `ro` handed over (in use), or None
        for capacity reserved for us to open one."""
        future: asyncio.Future[_Conn | _Grant] = loop.create_future()
        waiter = _Waiter(future, ro, deadline)
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self._dispatch()
        if not future.done():
            # Not a timer per wait (arming and cancelling one cost as much as the rest of a
            # contended checkout): the line's timer is left due at its earliest deadline, and
            # a newcomer's deadline, the pool's timeout from now, is normally the latest.
            expiry = self._expiry
            if expiry is None or expiry.when() > deadline:
                if expiry is not None:
                    expiry.cancel()
                self._expiry = loop.call_at(deadline, self._expire_waiters)
            if self._routes:
                waiter.trade = loop.call_later(TRADE_AFTER, self._trade_for, waiter)
        try:
            granted = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._unclaim(future.result(), ro)  # served as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            if waiter.trade is not None:
                waiter.trade.cancel()
        if isinstance(granted, _Conn):
            return granted
        if granted is _CAPACITY:
            return None
        if granted is _CLOSED:
            raise PoolClosedError("the pool closed while waiting for a connection")
        raise PoolTimeoutError(
            f"no connection available within {self._timeout:g}s: {len(self._in_use)} of "
            f"{self._burst_limit} in use, {len(self._waiters)} other caller(s) waiting"
        )

    def _expire_waiters(self) -> None:
        """The line's timer: time out every waiter whose deadline has come, drop the ones
        served or cancelled meanwhile, and set the timer for the earliest deadline left."""
        self._expiry = None
        loop = self._check_loop()
        now = loop.time()
        waiting = [waiter for waiter in self._waiters if not waiter.future.done()]
        self._waiters.clear()
        for waiter in waiting:
            # uvloop's timers count whole milliseconds: one may fire up to 1 ms early, and
            # re-armed for the same deadline it would fire again at once, and again.
            if waiter.deadline <= now + _TIMER_SLACK:
                self._timeouts += 1
                waiter.future.set_result(_TIMEOUT)
            else:
                self._waiters.append(waiter)
        if self._waiters:
            earliest = min(waiter.deadline for waiter in self._waiters)
            self._expiry = loop.call_at(earliest, self._expire_waiters)

    def _make_room(self, ro: bool) -> None:
        """Capacity was just reserved to open a connection of route `ro`: beyond `size`, an
        idle connection of the other route is closed for it. Kept, it would stay idle while
        every connection opened beyond `size` is closed again at its release."""
        other_idle = self._idle[not ro]
        if other_idle and self._reserved > self._size:
            self._retire(other_idle.popleft(), "it made room for a connection of the other route")

    def _trade_for(self, waiter: _Waiter) -> None:
        """A waiter not served within TRADE_AFTER while the other route has an idle
        connection: that one is closed, its capacity the waiter's to open its own (once
        closed: the waiter goes first in line, as for a trade of _give_back's)."""
        other_idle = self._idle[not waiter.route]
        if waiter.future.done() or waiter.promised or self._closed:
            return  # served, or a trade of _give_back's is on its way to it
        if not other_idle:
            waiter.impatient = True  # see route_trades
            return
        self._trades.promise(self._waiters, waiter)
        self._retire(other_idle.popleft(), "it was traded for a connection of the other route")

    def _unclaim(self, granted: _Conn | _Grant, ro: bool) -> None:
        """What a waiter of route `ro` was given as it was cancelled goes back to the pool."""
        if isinstance(granted, _Conn):
            self._give_back(granted)
        elif granted is _CAPACITY:
            self._reserved -= 1
            self._opening[ro] -= 1
            self._dispatch()
            self._check_drained()

    def _dispatch(self) -> None:
        """Serve waiters, first in line first, from idle connections of their route or
        free capacity."""
        by_route = self._idle
        if not (by_route[False] or by_route[True]) and (
            self._reserved >= self._burst_limit or self._closed
        ):
            return  # nothing to hand out: no need to walk the line
        waiters = self._waiters
        index = 0
        while index < len(waiters):
            waiter = waiters[index]
            if waiter.future.done():  # cancelled or timed out
                del waiters[index]
                continue
            granted: _Conn | _Grant
            idle = self._idle[waiter.route]
            if idle:
                granted = idle.pop()
                self._in_use.add(granted)
            elif self._reserved < self._burst_limit and not self._closed:
                self._reserve(waiter.route)
                self._make_room(waiter.route)
                granted = _CAPACITY
            else:
                index += 1  # a later waiter of the other route may have an idle one
                continue
            del waiters[index]
            waiter.future.set_result(granted)

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float, ro: bool) -> _Conn:
        """Open a connection of route `ro` for capacity already reserved, in a task of the
        pool's own: if the caller is cancelled or times out meanwhile, the connection still
        goes to the pool (or its capacity back to it)."""
        opening = self._spawn(self._open_raw(ro), "opening a connection")
        adopt = functools.partial(self._adopt, ro)
        try:
            done, _ = await asyncio.wait((opening,), timeout=max(deadline - loop.time(), 0.0))
        except asyncio.CancelledError:
            opening.add_done_callback(adopt)
            raise
        if not done:
            opening.add_done_callback(adopt)
            self._timeouts += 1
            raise PoolTimeoutError(f"no connection opened within {self._timeout:g}s")
        try:
            raw = opening.result()
        except BaseException:
            self._reserved -= 1
            self._opening[ro] -= 1
            self._dispatch()
            self._check_drained()
            raise
        conn = self._register(raw, ro)
        if self._closed:
            self._retire(conn, "the pool closed while it was opened")
            raise PoolClosedError("the pool closed while opening a connection")
        return conn

    async def _open_raw(self, ro: bool) -> Connection:
        try:
            raw = await self._factory.connect(read_only=ro)
        except BaseException:
            self._connect_errors += 1
            raise
        try:
            if self._configure is not None:
                await maybe_await(self._configure(raw))
            if self._pre_ping == 0.0:
                await self._factory.ping(raw)
        except BaseException:
            await self._close_raw(raw)
            raise
        return raw

    def _adopt(self, ro: bool, opening: asyncio.Task[Connection]) -> None:
        """A connection opened for a caller that left: to the pool, or its capacity back."""
        if opening.cancelled() or opening.exception() is not None:
            self._reserved -= 1
            self._opening[ro] -= 1
            self._dispatch()
            self._check_drained()
            return
        self._give_back(self._register(opening.result(), ro))

    def _register(self, raw: Connection, ro: bool) -> _Conn:
        self._opening[ro] -= 1  # open now: in _live
        conn = _Conn(raw, time.monotonic(), self._factory.generation_of(raw), ro)
        self._live.add(conn)
        self._in_use.add(conn)
        self._created += 1
        if type(raw) not in self._conn_types:
            self._conn_types = self._conn_types | {type(raw)}
        logger.debug("opened connection %#x", id(raw))
        return conn

    async def _ping(self, conn: _Conn, loop: asyncio.AbstractEventLoop, deadline: float) -> bool:
        """A round trip before handing `conn` out; False (and `conn` closed) if it failed."""
        ping = self._spawn(self._factory.ping(conn.raw), "pinging a connection")
        after = functools.partial(self._after_abandoned_ping, conn)
        try:
            done, _ = await asyncio.wait((ping,), timeout=max(deadline - loop.time(), 0.0))
        except asyncio.CancelledError:
            ping.add_done_callback(after)
            raise
        if not done:
            ping.add_done_callback(after)
            self._timeouts += 1
            raise PoolTimeoutError(f"no connection answered a ping within {self._timeout:g}s")
        if ping.cancelled() or ping.exception() is not None:
            self._retire(conn, "its ping failed", discarded=True)
            return False
        return True

    def _after_abandoned_ping(self, conn: _Conn, ping: asyncio.Task[None]) -> None:
        if ping.cancelled() or ping.exception() is not None:
            self._retire(conn, "its ping failed", discarded=True)
        else:
            self._give_back(conn)

    # -- release --------------------------------------------------------------------------

    def _release(self, conn: _Conn, exc: BaseException | None) -> bool:
        """The end of an outermost checkout, where it is settled without a coroutine: a
        clean use (given back), a connection found lost (retired). False: `_settle` must."""
        if exc is None and self._user_reset is None:
            state = self._look_after_use(conn.raw)
            if state == CLEAN:
                self._give_back(conn)
                return True
            if state == LOST:
                self._retire(conn, "it was found closed or broken after use", discarded=True)
                return True
        return False

    async def _settle(self, conn: _Conn, exc: BaseException | None) -> None:
        """_release's slow twin: the reset, in a task of the pool's own, which a
        cancellation of the caller does not interrupt."""
        cleanup = self._spawn(self._clean_up(conn, exc), "resetting a connection")
        await asyncio.shield(cleanup)

    async def _clean_up(self, conn: _Conn, exc: BaseException | None) -> None:
        raw = conn.raw
        try:
            if exc is not None:
                why = f"its use raised {type(exc).__name__}"
                if not self._factory.cancel_safe and _interrupted(exc):
                    self._retire(conn, why, discarded=True, interrupted=True)
                    return
                if isinstance(exc, Exception) and self._factory.is_disconnect(raw, exc):
                    self._retire(conn, why, discarded=True)
                    return
            state = self._look_after_use(raw)
            if state == LOST:
                self._retire(conn, "it was found closed or broken after use", discarded=True)
                return
            if exc is not None or state != CLEAN:
                await self._factory.reset(raw)
            if self._user_reset is not None:
                await maybe_await(self._user_reset(raw))
            if self._look_after_use(raw) != CLEAN:
                raise RuntimeError("the connection is still not clean after its reset")
        except BaseException as problem:
            logger.warning("reset failed, discarding the connection: %s", type(problem).__name__)
            self._retire(conn, "its reset failed", discarded=True)
            if not isinstance(problem, Exception):
                raise
            return
        self._give_back(conn)

    def _look_after_use(self, raw: Connection) -> int:
        try:
            return int(self._factory.state_after_use(raw))
        except Exception:  # raising means LOST (see ConnectionFactory.state_after_use)
            return LOST

    def _give_back(self, conn: _Conn) -> None:
        """A connection in use, fit for the next caller: to the longest waiter of its
        route, else idle (or closed, when it is beyond `size` or the pool is closed); or
        its capacity to a waiter of the other route ahead of that one (see route_trades)."""
        self._in_use.discard(conn)
        conn.owner = None
        if self._closed:
            self._retire(conn, "the pool closed")
            return
        waiters = self._waiters
        waiter = self._trades.first_served(waiters, conn.ro, self._route_count) if waiters else None
        if waiter is not None:
            if waiter.route is conn.ro:
                waiters.remove(waiter)
                self._in_use.add(conn)
                if self._timed:  # used just now: max_idle and pre_ping count from here
                    conn.last_used = time.monotonic()
                waiter.future.set_result(conn)
                return
            # Its capacity is granted once it is closed (see _close_and_free).
            self._trades.trade(waiters, waiter)
            self._retire(conn, "it was traded for a connection of the other route")
            return
        if len(self._live) > self._size:
            self._retire(conn, "a burst connection came back with nobody waiting")
            return
        if self._timed:
            conn.last_used = time.monotonic()
        self._idle[conn.ro].append(conn)

    def _reserve(self, ro: bool) -> None:
        """Capacity for a connection of route `ro` that its caller opens (`_open`)."""
        self._reserved += 1
        self._opening[ro] += 1

    def _route_count(self, ro: bool) -> int:
        """Connections of route `ro` open or being opened."""
        return self._opening[ro] + sum(1 for c in self._live if c.ro is ro)

    # -- closing --------------------------------------------------------------------------

    def _retire(
        self, conn: _Conn, why: str, *, discarded: bool = False, interrupted: bool = False
    ) -> None:
        """Close a connection (no longer idle, or in use by nobody) for good, in a task of
        the pool's own; its capacity comes back once the driver connection is closed (an
        `interrupted` one's: once its factory has done what it can to stop the operation
        still running on the server, `ConnectionFactory.close_interrupted`)."""
        self._live.discard(conn)
        self._in_use.discard(conn)
        conn.owner = None
        self._closed_count += 1
        self._discarded += discarded
        logger.debug("closing connection %#x: %s", id(conn.raw), why)
        self._spawn(self._close_and_free(conn.raw, interrupted), "closing a connection")

    async def _close_and_free(self, raw: Connection, interrupted: bool = False) -> None:
        try:
            await self._close_raw(raw, interrupted)
        finally:
            self._reserved -= 1
            self._dispatch()
            self._check_drained()

    async def _close_raw(self, raw: Connection, interrupted: bool = False) -> None:
        factory = self._factory
        try:
            if interrupted:
                await factory.close_interrupted(raw)
            else:
                await factory.close_connection(raw)
        except Exception as exc:
            logger.debug("closing %#x raised %s (ignored)", id(raw), type(exc).__name__)

    def _check_drained(self) -> None:
        """While close() waits: resolve its future once every connection is back (but the
        closing task's own) and no capacity is in flux (opening or closing)."""
        drained = self._drained
        if (
            drained is not None
            and not drained.done()
            and self._reserved == len(self._live)
            and all(conn.owner is self._closer for conn in self._in_use)
        ):
            drained.set_result(None)

    def _spawn(self, work: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        loop = self._loop
        assert loop is not None  # bound by the checkout that led here
        task = loop.create_task(_run(work), name=f"qdbpool.aio: {what}")
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)
        return task


async def _run(work: Awaitable[Any]) -> Any:
    return await work


class _Checkout:
    """What `BoundedPool.connect()` returns: `async with` it for a connection (again once
    that use has ended, if you like; but not twice at once)."""

    __slots__ = ("_conn", "_entered", "_mine", "_pool", "_previous", "_ro", "_shared")

    def __init__(self, pool: BoundedPool, ro: bool) -> None:
        self._pool = pool
        self._ro = ro
        self._entered = False  # between __aenter__ and __aexit__
        self._conn: _Conn | None = None  # taken from the pool by this checkout
        self._shared: _Conn | None = None  # or the task's, nested in its own checkout
        self._mine: _Held | None = None  # what this checkout set the context variable to
        self._previous: _Held | None = None  # ... and what it held before

    async def __aenter__(self) -> Connection:
        if self._entered:
            raise RuntimeError("a pool.connect() checkout is in use; call connect() again")
        self._entered = True
        pool = self._pool
        held_var = pool._held[self._ro]
        held = held_var.get()
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop runs here: _acquire says so (WrongEventLoopError)
            task = None
        # Nested in this task's own checkout: the same connection, if that checkout still
        # holds it. An async generator's checkout writes into the context of the task that
        # iterates it, and may end in another (closed there, or by the garbage collector):
        # then this task's context still names a connection it no longer holds.
        if held is not None and task is not None and held.task is task and held.conn.owner is task:
            conn = held.conn
            conn.nested += 1
            self._shared = conn
            pool._checkouts += 1
            return conn.raw
        # A coroutine call costs as much as the rest of a checkout: only when it may wait.
        try:
            conn = pool._take_idle(task, self._ro) or await pool._acquire(task, self._ro)
        except BaseException:
            self._entered = False
            raise
        self._conn = conn
        self._previous = held
        mine = self._mine = _Held(conn, task)
        held_var.set(mine)
        return conn.raw

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        shared = self._shared
        self._entered = False
        if shared is not None:  # nested: the outermost checkout gives it back ...
            self._shared = None
            shared.nested -= 1
            ending = shared.ended
            if shared.nested or ending is None:
                return
            # ... unless it ended first (in another task, see __aenter__): the last nested
            # one then ends it, as it ended, or as this one did.
            shared.ended = None
            conn, exc = shared, ending.exc or exc
        else:
            conn_or_none = self._conn
            if conn_or_none is None:
                return
            conn = conn_or_none
            self._conn = None
            held_var = pool._held[self._ro]
            if held_var.get() is self._mine:  # not when ended in another task's context
                held_var.set(self._previous)
            self._mine = self._previous = None
            if conn.nested:  # checkouts nested in this one still use it: the last ends it
                conn.ended = _Ending(exc)
                return
        if not pool._release(conn, exc):
            await pool._settle(conn, exc)
