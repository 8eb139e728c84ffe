"""Pool: the behaviour every pool strategy shares (SingletonPool, BoundedPool).

The hot path (a checkout of a connection the thread already holds) does no I/O, takes no
lock and calls no logger: one thread-local lookup and a generation compare on the way out,
the factory's no-I/O `state_after_use` on the way back (liveness and reset in one look), and
the clock only when lifetime, idle or pre-ping limits are configured. Everything rare
(opening, discarding, closing, forking) takes the pool's lock.

`@with_conn` and `connect()` share one protocol: `_checkout` / `_checkin`, with `_on_error`
when the user's code raised in between.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from qdbpool import _fork, validation
from qdbpool.backoff import Backoff
from qdbpool.errors import ArgumentTypeError, ConfigurationError, PoolClosedError
from qdbpool.events import (
    DISCARD_REASONS,
    CloseReason,
    ConnectionClosed,
    ConnectionOpened,
    Listener,
    Listeners,
)
from qdbpool.pooled import PooledConnection
from qdbpool.protocol import (
    CLEAN,
    LOST,
    Connection,
    ConnectionFactory,
    as_factory,
)
from qdbpool.session import SessionWrapper, checkout_wrapper
from qdbpool.stats import PoolStats

logger = logging.getLogger("qdbpool")

Hook = Callable[[Connection], object]


# How many open pools use each factory: `initialize(factory)` with the previous pool's
# factory makes the new pool before it closes the old one, and the factory (its monitor
# thread, the callers waiting on it) must keep serving the new pool. The last to close
# closes it.
_factory_users: weakref.WeakKeyDictionary[ConnectionFactory, int] = weakref.WeakKeyDictionary()
_factory_users_lock = _fork.Lock()


def _use_factory(factory: ConnectionFactory) -> None:
    with _factory_users_lock, contextlib.suppress(TypeError):  # unhashable: not counted
        _factory_users[factory] = _factory_users.get(factory, 0) + 1


def _last_user_of(factory: ConnectionFactory) -> bool:
    """One pool stopped using `factory`: whether it was the last."""
    with _factory_users_lock:
        try:
            left = _factory_users.get(factory, 1) - 1
            if left > 0:
                _factory_users[factory] = left
                return False
            _factory_users.pop(factory, None)
        except TypeError:  # unhashable, never counted
            pass
        return True


def _check_pre_ping(value: bool | float) -> float | None:
    """pre_ping: False (never), True (every checkout) or seconds of idleness before a ping."""
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


class _ThreadSlots(threading.local):
    """Per thread, the connection it holds for each route; None when it holds none.

    Class defaults rather than getattr(local, name, None): a plain attribute read is the
    cheapest way to a thread's connection, and it is on every checkout's path."""

    rw: PooledConnection | None = None
    ro: PooledConnection | None = None
    opening: frozenset[bool] = frozenset()  # routes (read_only) being opened (see Pool._open)


class Pool:
    """The base of every pool: validation, lifetime, hooks, stats, close and fork rules.

    Subclasses (`SingletonPool`, `BoundedPool`) decide which connection a checkout gets
    (`_checkout` / `_checkin`); this class is not used on its own.

    Args:
        get_conn: A zero-argument callable that returns a new connection, or a factory
            from `qdbpool.factories`. Without it, the keyword arguments go to
            `quasardb.Cluster(**kwargs)`, exactly as in `quasardb.pool`.
        pre_ping: False (never), True (a round trip at every outermost checkout, and for
            every new connection before its first use), or seconds: a round trip only
            when the connection has been idle that long.
        max_lifetime: Seconds after which a connection is replaced at its next checkout.
        max_idle: Seconds of idleness after which a connection is replaced at checkout.
        configure: Called once with each new connection, before its first use.
        reset: Called with the connection each time an outermost use ends, after the
            factory's own reset (which rolls back an open transaction). A connection it
            leaves inside a transaction is discarded.
        **kwargs: Without `get_conn`, arguments of `quasardb.Cluster`; with it, refused
            (TypeError).

    Raises:
        ArgumentTypeError: `get_conn` or a hook is not callable, or keyword arguments were
            given with `get_conn` (a ConfigurationError and a TypeError).
        ConfigurationError: `pre_ping`, `max_lifetime` or `max_idle` is out of range (a
            ValueError).
    """

    #: Seconds a checkout may spend retrying a server whose new connections fail, before
    #: PoolTimeoutError (whose `__cause__` is the last failure). BoundedPool's `timeout`
    #: sets it, and bounds waiting in line too. Not an argument of SingletonPool: its
    #: keyword arguments go to quasardb.Cluster, which has a `timeout` of its own.
    _timeout = 30.0

    def __init__(
        self,
        get_conn: Callable[[], Connection] | ConnectionFactory | None = None,
        *,
        pre_ping: bool | float = False,
        max_lifetime: float | None = None,
        max_idle: float | None = None,
        configure: Hook | None = None,
        reset: Hook | None = None,
        **kwargs: Any,
    ) -> None:
        if get_conn is None:
            from qdbpool.factories.quasardb import QuasarDB

            get_conn = QuasarDB(**kwargs)
        elif kwargs:
            raise ArgumentTypeError(
                f"unexpected keyword arguments {sorted(kwargs)}: without get_conn they are "
                f"passed to quasardb.Cluster; with get_conn, give them to the factory instead"
            )
        for name, hook in (("configure", configure), ("reset", reset)):
            if hook is not None and not callable(hook):
                raise ArgumentTypeError(f"{name} must be callable, not {type(hook).__name__}")
        self._factory = as_factory(get_conn)
        self._pre_ping = _check_pre_ping(pre_ping)
        self._max_lifetime = validation.optional_seconds("max_lifetime", max_lifetime)
        self._max_idle = validation.optional_seconds("max_idle", max_idle)
        # Whether checkouts need the clock at all: keeps time.monotonic() off the default path.
        self._timed = (
            self._pre_ping is not None
            or self._max_lifetime is not None
            or self._max_idle is not None
        )
        self._configure = configure
        self._user_reset = reset
        self._is_usable = self._factory.is_usable
        self._state_after_use = self._factory.state_after_use
        # The look after each use, cheapest first: falsy means clean for certain.
        self._after_use_hint = self._factory.after_use_hint or self._state_after_use
        # Whether a release must do more than that look (the user's hook, or the clock).
        self._full_release = reset is not None or self._timed
        self._routes = self._factory.routes_reads
        self._conn_types: frozenset[type] = frozenset()
        self._closed = False
        self._events = Listeners()  # kept across a fork: a child's pool reports the same way
        self._init_state()
        _use_factory(self._factory)  # last: a pool whose arguments were refused never counts
        _fork.watch(self)

    def _init_state(self) -> None:
        """Everything that must start afresh in a forked child."""
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified when a connection closes
        self._closed_event = threading.Event()  # set by close(): wakes whoever waits
        if self._closed:
            self._closed_event.set()
        self._backoff = Backoff(self._closed_event)
        self._live: weakref.WeakSet[PooledConnection] = weakref.WeakSet()
        # Per thread and route ("rw"/"ro"): the connection this thread holds. SingletonPool
        # keeps it there between calls; other pools only while it is checked out.
        self._local = _ThreadSlots()
        self._created = self._closed_count = self._discarded = 0
        self._connect_errors = self._retired_checkouts = 0

    # -- public surface -------------------------------------------------------------------

    @property
    def factory(self) -> ConnectionFactory:
        """The factory that opens this pool's connections.

        Also the way to a connection of your own, outside the pool (say, a second one in a
        thread that holds one already): `conn = pool.factory.connect()`; you close it.
        """
        return self._factory

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for each event of this pool and of its factory (see
        `qdbpool.events`): connections opened and closed (with the reason), callers that
        waited, and, for factories that route, hosts changing role and failovers.

        Returns the function that unsubscribes it. Nothing is emitted on a checkout's fast
        path, so a listener costs nothing there.

        Raises:
            ArgumentTypeError: `listener` is not callable.
        """
        remove_here = self._events.add(listener)
        remove_there = self._factory.subscribe(listener)

        def unsubscribe() -> None:
            remove_here()
            remove_there()

        return unsubscribe

    def connect(self, *, read_only: bool = False) -> SessionWrapper:
        """Check out a connection, wrapped so that `with` or `.close()` releases it.

        Release what you connect: `with pool.connect() as conn: ...`. Once released, the
        wrapper raises `ConnectionReleasedError` on any use. Checkouts nested in one thread
        share its connection (the thread's connection in a SingletonPool, the one it has
        checked out in a BoundedPool); for a separate one, see `factory`.

        Raises:
            ArgumentTypeError: `read_only` is not a bool.
        """
        if read_only is not False and read_only is not True:
            raise ArgumentTypeError(f"connect(read_only=...) takes a bool, not {read_only!r}")
        return checkout_wrapper(self, self._checkout(read_only))

    def release(self, conn: Any) -> None:
        """Give back a connection from `connect()` (or the driver connection inside it).

        Releasing one twice is harmless. Given the driver connection, it ends this
        thread's latest `connect()` of it that is still out, if any: a connection that
        `@with_conn` injected is left to the call, which releases it when it returns.

        Raises:
            ConfigurationError: `conn` is not a connection this pool handed out (a
                ValueError).
        """
        if isinstance(conn, SessionWrapper):
            conn._release_from(self)
            return
        pooled = self._find_held(conn)
        if pooled is not None:
            checkout = pooled.last_checkout
            # Only a checkout still out is checked in (and its wrapper stops reaching the
            # connection). Checking in again what was released, or what @with_conn holds,
            # would give the connection back while it is in use: a BoundedPool would then
            # hand it to another thread, and list it idle twice.
            if checkout is not None and checkout.end() is not None:
                self._checkin(pooled)
            return
        with self._lock:
            known = any(p.raw is conn for p in self._live)
        if not known:
            raise ConfigurationError(
                f"release() got a {type(conn).__name__} that this pool did not hand out"
            )

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: no more checkouts (PoolClosedError), idle connections closed now.

        Connections in use are closed by their holders when released (or when the holder
        thread ends); close() waits up to `timeout` seconds for that. The ones still out
        then are interrupted (their query is cancelled on the server where the factory
        knows how, and network connections get their socket shut down), counted closed,
        and left for their holder to close: never freed under the thread using them.
        Idempotent and thread-safe; a second call does not wait for them again.
        """
        timeout = validation.seconds("timeout", timeout, zero_ok=True)
        with self._lock:
            first = not self._closed
            self._closed = True
            self._closed_event.set()
            self._on_close()
            live = list(self._live)
        if first:
            logger.debug("closing pool %r", self)
        for pooled in live:
            if self._claim_idle(pooled):
                self._retire(pooled, "pool_closed")
            else:  # in use: its holder sees the mark when it releases it, and closes it
                pooled.mark_closed()
        me = threading.get_ident()
        with self._lock:
            # The caller's own checkouts cannot come back while it waits here.
            self._changed.wait_for(
                lambda: not any(p.depth > 0 and p.owner != me for p in self._live),
                timeout=timeout,
            )
            held = [p for p in self._live if p.depth > 0]
            for pooled in held:
                # Still in _live, so nobody has closed it yet: safe to interrupt here.
                self._interrupt(pooled)
                self._live.discard(pooled)
                pooled.retired = pooled.orphaned = True
                self._count_closed(pooled, discarded=False)
            leftovers = [p for p in self._live if p.depth == 0]
        if self._events:
            for _ in held:  # counted closed now; their holders close them later
                self._events.emit(ConnectionClosed(self, "pool_closed"))
        if held:
            logger.warning(
                "pool closed with %d connection(s) still in use; each is closed when released",
                len(held),
            )
        for pooled in leftovers:  # came back while we waited, or never counted as out
            if self._claim_idle(pooled):
                self._retire(pooled, "pool_closed")
        if first and _last_user_of(self._factory):
            self._factory.close()

    @staticmethod
    def _claim_idle(pooled: PooledConnection) -> bool:
        """Claim an idle connection for closing, against a checkout racing us without a
        lock. Both sides write their own flag, then read the other's (Dekker's way): a
        checkout sets `depth` then reads `closed` (or the generation, which `mark_closed`
        sets too); we mark it closed then read `depth`. So either the checkout sees it
        closed and backs off, or we see `depth` and let go. Idle means that `depth` counts
        nothing but checkouts `dropped` in other threads (SingletonPool; else 0)."""
        if pooled.depth != pooled.dropped:
            return False
        generation = pooled.generation
        pooled.mark_closed()
        if pooled.depth != pooled.dropped:  # in use after all: closed when released
            pooled.closed, pooled.generation = False, generation
            return False
        return True

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters."""
        with self._lock:
            live = list(self._live)
            return PoolStats(
                open=len(live),
                in_use=sum(1 for p in live if p.depth > 0),
                created=self._created,
                closed=self._closed_count,
                discarded=self._discarded,
                checkouts=self._retired_checkouts + sum(p.checkouts for p in live),
                connect_errors=self._connect_errors,
                **self._extra_stats(),
            )

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state} factory={self._factory!r}>"

    # -- what subclasses implement ----------------------------------------------------------

    def _checkout(self, read_only: bool) -> PooledConnection:
        """A connection for the calling thread, marked in use (`depth` > 0)."""
        raise NotImplementedError

    def _checkin(self, pooled: PooledConnection) -> None:
        """The end of one checkout by the thread that made it."""
        raise NotImplementedError

    def _release_dropped(self, pooled: PooledConnection) -> None:
        """The end of a checkout whose wrapper was garbage collected unreleased, maybe in
        another thread than the one that made it (the cycle collector runs anywhere), which
        may be using the connection in a nested checkout meanwhile."""
        raise NotImplementedError

    def _find_held(self, raw: Connection) -> PooledConnection | None:
        """The calling thread's checked-out record for a raw driver connection, if any."""
        me = threading.get_ident()
        for route in ("rw", "ro"):
            pooled: PooledConnection | None = getattr(self._local, route, None)
            # A BoundedPool's slot may still point to a record another thread holds now.
            if pooled is not None and pooled.raw is raw and pooled.depth > 0 and pooled.owner == me:
                return pooled
        return None

    def _extra_stats(self) -> dict[str, int]:
        return {}

    def _on_close(self) -> None:
        """Called once under the lock when the pool closes (wake whoever waits)."""

    # -- shared machinery -----------------------------------------------------------------

    def _from_finalizer(self, work: Callable[[], None]) -> None:
        """Run a finalizer's `work` (a release, a close) now, or, when this thread holds the
        pool's lock, in a thread of its own that waits for the lock.

        The cycle collector runs finalizers wherever memory is allocated, inside the pool's
        own lock too; the work may do I/O (a rollback, a close) and call listeners, neither
        of which may happen under the lock. Should no thread start (at interpreter exit, at
        a thread limit), it runs now all the same: late listeners beat a leaked connection.
        """
        if self._lock._is_owned():  # type: ignore[attr-defined]  # CPython RLock's own
            try:
                threading.Thread(target=work, name="qdbpool-finalizer", daemon=True).start()
                return
            except RuntimeError:
                pass
        work()

    def _open(self, read_only: bool, deadline: float | None = None) -> PooledConnection:
        """Open a new connection (outside the lock: it is I/O), check it, register it.

        Failed attempts back off (see backoff.py); a new connection that fails its first
        ping is closed and another tried until `deadline` (default: now + timeout).
        The result is marked in use (depth 1).
        """
        started = time.monotonic()
        if deadline is None:
            deadline = started + self._timeout
        local = self._local
        replica = read_only and self._routes  # one route when the factory does not route
        self._refuse_reentry(replica)
        outer = local.opening
        local.opening = outer | {replica}
        try:
            return self._open_marked(read_only, started, deadline)
        finally:
            local.opening = outer

    def _refuse_reentry(self, replica: bool) -> None:
        """Refuse a checkout that this thread makes while it opens a connection of the
        same route: from the configure hook, a ConnectionOpened listener or the factory.
        Each new connection would open another for its own hook, until the server ran out
        of connections; or, in a full BoundedPool, wait its whole timeout for the
        capacity its own opening holds."""
        if replica in self._local.opening:
            raise ConfigurationError(
                "the configure hook, a ConnectionOpened listener or the factory used this "
                "pool while it opened a connection of the same route; configure gets the "
                "new connection as its argument"
            )

    def _open_marked(self, read_only: bool, started: float, deadline: float) -> PooledConnection:
        # _open's work, while the thread is marked as opening a connection of this route.
        while True:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            self._backoff.wait_turn(deadline)
            raw = self._connect_raw(read_only)
            problem = self._first_use_problem(raw)
            if problem is None:
                break
            self._backoff.failed(problem)
            logger.debug("new connection %#x failed its first check: %r", id(raw), type(problem))
            self._close_raw(raw)
        self._backoff.succeeded()
        pooled = PooledConnection(
            self, raw, read_only, time.monotonic(), self._factory.generation_of(raw)
        )
        pooled.depth = 1  # registered as in use: close() must not take it from the caller
        with self._lock:
            if self._closed:  # closed while we were connecting: nobody may get this one
                pooled.mark_closed()
                pooled.retired = True  # never counted: closed right below
                closed_meanwhile = True
            else:
                closed_meanwhile = False
                self._live.add(pooled)
                self._created += 1
                if type(raw) not in self._conn_types:
                    self._conn_types = self._conn_types | {type(raw)}
        if closed_meanwhile:
            self._close_raw(raw)
            raise PoolClosedError("the pool is closed")
        route = "read-only" if read_only else "read-write"
        logger.debug("opened %s connection %#x", route, id(raw))
        if self._events:
            self._events.emit(ConnectionOpened(self, read_only, pooled.born - started))
        return pooled

    def _connect_raw(self, read_only: bool) -> Connection:
        try:
            return self._factory.connect(read_only=read_only)
        except BaseException as exc:
            with self._lock:
                self._connect_errors += 1
            if self._closed:
                # e.g. a routing factory's wait for a primary, cut short by close()
                raise PoolClosedError("the pool closed while opening a connection") from exc
            if isinstance(exc, Exception) and not self._factory.paces_connects:
                self._backoff.failed(exc)
            raise

    def _first_use_problem(self, raw: Connection) -> Exception | None:
        """Run `configure`, then ping if every checkout pings: why `raw` is unfit, if it is.

        `configure`'s own errors are the user's to see, and propagate; a failed ping means
        a sick server, which the caller backs off from and retries."""
        try:
            if self._configure is not None:
                self._configure(raw)
        except BaseException:
            self._close_raw(raw)
            raise
        if self._pre_ping == 0.0:
            try:
                self._factory.ping(raw)
            except Exception as exc:
                return exc
        return None

    def _unfit_reason(self, pooled: PooledConnection) -> CloseReason | None:
        """Validation at an outermost checkout, for connections that passed the no-I/O
        check: why the limits or a ping make it unfit, or None."""
        now = time.monotonic()
        if self._max_lifetime is not None and now - pooled.born > self._max_lifetime:
            return "expired"
        idle = now - pooled.last_used
        if self._max_idle is not None and idle > self._max_idle:
            return "expired"
        if self._pre_ping is not None and idle >= self._pre_ping:
            try:
                self._factory.ping(pooled.raw)
            except Exception as exc:
                logger.debug("ping failed on %#x: %r", id(pooled.raw), type(exc))
                return "ping_failed"
        return None

    def _after_use(self, pooled: PooledConnection) -> bool:
        """The end of an outermost checkout: drop a lost connection, reset a dirty one (and
        run the user's reset hook), note when it was last used. False if it was dropped."""
        raw = pooled.raw
        try:
            dirty = self._after_use_hint(raw)
        except Exception:
            dirty = True
        if dirty or self._full_release:
            state = self._look_after_use(raw) if dirty else CLEAN
            if state == LOST:
                self._retire(pooled, "broken")
                return False
            try:
                if state != CLEAN:
                    self._factory.reset(raw)
                if self._user_reset is not None:
                    self._user_reset(raw)
                    if self._look_after_use(raw) != CLEAN:
                        raise RuntimeError("the reset hook left the connection unclean")
            except BaseException as exc:
                # KeyboardInterrupt in the middle of a rollback, too: the connection's state
                # is unknown, and it must not stay marked in use for good.
                logger.warning(
                    "reset failed, discarding the connection: %s", exc.__class__.__name__
                )
                self._retire(pooled, "reset_failed")
                if not isinstance(exc, Exception):
                    pooled.depth = 0  # retired: nobody's any more
                    raise
                return False
            if self._timed:
                pooled.last_used = time.monotonic()
        return True

    def _on_error(self, pooled: PooledConnection, exc: BaseException) -> None:
        """User code raised while holding `pooled`: discard it if the connection is lost."""
        if pooled.closed:
            return
        if isinstance(exc, Exception):
            try:
                lost = self._factory.is_disconnect(pooled.raw, exc)
            except Exception:
                lost = True
        else:
            # Interrupted (KeyboardInterrupt, ...) mid-conversation: the protocol state is
            # unknown, so the connection cannot be trusted again.
            lost = True
        if lost:
            logger.debug("%#x is lost: its user raised %s", id(pooled.raw), type(exc).__name__)
            self._retire(pooled, "disconnect")

    def _retire(
        self, pooled: PooledConnection, reason: CloseReason, *, forget: bool = True
    ) -> None:
        """Close a connection for good, for `reason` (see qdbpool.events: some reasons
        count as discards). Idempotent; safe from any thread."""
        if pooled.pid != os.getpid():
            # A parent's connection that the child's fork hook did not see (close() had
            # taken it off `_live`, left to its holder): ending it would end the parent's
            # session.
            pooled.mark_closed()
            _fork.keep_inherited(pooled.raw)
            return
        counted = False  # by this call (not earlier, by close() orphaning it)
        with self._lock:
            # Not `pooled in self._live`: the cycle collector clears weak references before
            # it runs finalizers, so a record collected with its wrapper has left the
            # WeakSet before anyone could retire it.
            if pooled.retired:  # retired already, or orphaned by close()
                pooled.mark_closed()
                if not pooled.orphaned:
                    return
                pooled.orphaned = False  # counted when orphaned; its holder closes it now
            else:
                pooled.retired = True
                pooled.mark_closed()
                self._live.discard(pooled)
                self._count_closed(pooled, discarded=reason in DISCARD_REASONS)
                counted = True
            self._forget(pooled, from_finalizer=not forget)
            self._changed.notify_all()
        logger.debug("closing connection %#x: %s", id(pooled.raw), reason)
        try:
            self._close_raw(pooled.raw)
        finally:  # a KeyboardInterrupt in the driver's close must not keep its capacity
            self._after_retire()
        if counted and self._events:
            self._events.emit(ConnectionClosed(self, reason))

    def _after_retire(self) -> None:
        """A connection was closed (after its driver connection, so that a pool counting
        capacity never has one more open than it allows)."""

    def _count_closed(self, pooled: PooledConnection, *, discarded: bool) -> None:
        """Under the lock: `pooled` has left `_live` for good."""
        self._closed_count += 1
        self._discarded += discarded
        self._retired_checkouts += pooled.checkouts

    def _forget(self, pooled: PooledConnection, *, from_finalizer: bool) -> None:
        """Drop the pool's own references to a retired connection (called under the lock).

        Only the owner thread's slots are visible here; other threads notice `closed`. A
        finalizer may run while its thread is torn down: then the thread-local is left alone.
        """
        if from_finalizer:
            return
        for route in ("rw", "ro"):
            if getattr(self._local, route, None) is pooled:
                delattr(self._local, route)

    def _look_after_use(self, raw: Connection) -> int:
        try:
            return int(self._state_after_use(raw))
        except Exception:  # see ConnectionFactory.state_after_use: raising means LOST
            return LOST

    def _interrupt(self, pooled: PooledConnection) -> None:
        try:
            self._factory.interrupt(pooled.raw)
        except Exception as exc:
            logger.debug("interrupting %#x raised %s (ignored)", id(pooled.raw), type(exc).__name__)

    def _close_raw(self, raw: Connection) -> None:
        try:
            self._factory.close_connection(raw)
        except Exception as exc:
            logger.debug("closing %#x raised %s (ignored)", id(raw), type(exc).__name__)

    def _after_fork_in_child(self) -> None:
        inherited = list(self._live)
        for pooled in inherited:
            pooled.mark_closed()  # so that no finalizer or release ever closes it here
            pooled.retired = True
            _fork.keep_inherited(pooled.raw)
        self._init_state()
        self._factory.after_fork_in_child()
