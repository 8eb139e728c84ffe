"""What a pool asks of a factory: the one small protocol every factory implements.

The pool decides *when* (checkout, release, error, close); the factory decides *how* for its
database (what "alive" means without I/O, how to ping, reset or route). A plain zero-argument
callable is adapted by `CallableFactory`, which guesses the DB-API conventions it can see.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qdbpool.errors import ArgumentTypeError

if TYPE_CHECKING:  # events imports the drivers, which import this module
    from qdbpool.events import Listener

logger = logging.getLogger("qdbpool")

Connection = Any
"""A driver's connection object: quasardb.Cluster, sqlite3.Connection, psycopg.Connection, ..."""


class Generation:
    """A counter a factory moves on to make unfit every connection it tagged with an older
    value (e.g. all connections to a host that changed role). The pool compares it at every
    checkout: two attribute reads, no I/O."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


#: The generation of connections that cannot go stale while idle (it never moves).
NEVER_STALE = Generation()

# What `state_after_use` reports when a connection comes back from use.
CLEAN = 0  # ready for the next checkout as it is
NEEDS_RESET = 1  # usable once `reset` has run (e.g. a transaction is open)
LOST = 2  # closed or broken: discard it


class ConnectionFactory:
    """Base class of factories. Every method has a safe default; override what you know.

    A factory is also a plain callable (`factory()` returns a new connection), so it can be
    passed anywhere a `get_conn` callable is expected.
    """

    #: True when `connect(read_only=True)` may return a different (replica) connection.
    routes_reads: bool = False

    #: True when the factory paces its own connection attempts (the routing factories
    #: watch every host and back off per host, and wait for a new primary by themselves):
    #: then the pool adds no pause of its own after a failed `connect()`, which would only
    #: delay the first write after a failover.
    paces_connects: bool = False

    def connect(self, *, read_only: bool = False) -> Connection:
        """Open and return a new driver connection (for a replica when `read_only`)."""
        raise NotImplementedError

    def __call__(self) -> Connection:
        return self.connect()

    def is_usable(self, conn: Connection) -> bool:
        """No I/O, just what the driver already knows (closed or broken flags). A driver's
        flags change only while the connection is in use, so the pool asks when it comes
        back (through `state_after_use`), and at a checkout nested in another one."""
        return True

    def generation_of(self, conn: Connection) -> tuple[Generation, int]:
        """The counter that makes `conn` unfit once it moves past the value returned with it.
        Asked once per new connection; the pool compares at every checkout."""
        return NEVER_STALE, 0

    def ping(self, conn: Connection) -> None:
        """A round trip to the server; raises if the connection does not answer."""

    def needs_reset(self, conn: Connection) -> bool:
        """Whether `reset` has work to do, known without I/O (asked at every release)."""
        return False

    def reset(self, conn: Connection) -> None:
        """Bring a released connection back to a clean state (roll back an open transaction)."""

    def state_after_use(self, conn: Connection) -> int:
        """CLEAN, NEEDS_RESET or LOST, without I/O: asked each time a connection comes back.

        The default combines `is_usable` and `needs_reset`; a factory may answer both with
        one look at the driver (it is on every call's path). Raising counts as LOST, so a
        factory may hand over a C-level getter whose truth means NEEDS_RESET and which
        raises on a closed connection (SQLite's is `operator.attrgetter("in_transaction")`)."""
        if not self.is_usable(conn):
            return LOST
        return NEEDS_RESET if self.needs_reset(conn) else CLEAN

    #: Optional: a cheaper look than `state_after_use`, for the decorated call's fast path.
    #: Falsy means CLEAN for certain; anything else (or raising) sends the connection to
    #: `state_after_use` for the precise answer. Best a C-level getter: it runs after every
    #: call, where a Python method costs a frame (psycopg's is the libpq transaction status,
    #: which is 0 only when idle). None: `state_after_use` serves as its own hint.
    after_use_hint: Callable[[Connection], object] | None = None

    def is_disconnect(self, conn: Connection, exc: BaseException) -> bool:
        """Whether `exc`, raised while using `conn`, means the connection itself is lost.

        Factories that watch hosts may also use this moment to react (mark a host suspect)."""
        return isinstance(exc, (ConnectionError, EOFError)) or not self.is_usable(conn)

    def interrupt(self, conn: Connection) -> None:
        """Make a use of `conn` that another thread has in progress, or starts next, fail
        soon, without freeing anything: called from a thread that does not own `conn`.

        Closing a connection under the thread using it can crash the interpreter (C
        drivers such as libpq and sqlite3 free memory that thread is reading), so the pool
        never does that; it interrupts, and the holder closes the connection on release.
        The default does nothing: the holder simply finishes what it is doing.
        """

    def describe(self, conn: Connection) -> str:
        """How a connection is shown (the repr of what `Pool.connect()` returns): its own
        repr, with any credential the factory connects with blanked out."""
        return repr(conn)

    def close_connection(self, conn: Connection) -> None:
        """Close a driver connection for good. Only ever called by the thread using it, or
        for a connection nobody uses."""
        close = getattr(conn, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        """Release what the factory itself holds (monitor threads); connections are the pool's."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for the factory's own events (a routing factory's hosts
        changing role, failovers; see qdbpool.events); returns the function that stops it.
        A pool's `subscribe` subscribes here too. The default has no events."""
        return _nothing_to_undo

    def after_fork_in_child(self) -> None:
        """Forget state inherited from the parent process (threads do not survive a fork)."""


def _nothing_to_undo() -> None:
    pass


def _no_liveness_check(conn: Connection) -> bool:
    return True


def sqlite_is_usable(conn: sqlite3.Connection) -> bool:
    try:
        conn.total_changes  # noqa: B018 - raises ProgrammingError once the connection is closed
    except sqlite3.ProgrammingError:
        return False
    return True


def liveness_check_for(conn: Connection) -> Callable[[Connection], bool]:
    """Pick, once per connection type, the cheapest no-I/O liveness check it offers."""
    if isinstance(conn, sqlite3.Connection):
        return sqlite_is_usable
    if hasattr(conn, "closed"):
        # psycopg 3 (bool), psycopg2 (int): nonzero once closed or broken.
        return lambda c: not c.closed
    if hasattr(conn, "open") and not callable(conn.open):
        return lambda c: bool(c.open)  # PyMySQL
    if callable(getattr(conn, "is_open", None)):
        return lambda c: bool(c.is_open())  # quasardb.Cluster
    return _no_liveness_check


def _qualified_name(fn: Callable[..., Any]) -> str:
    # Only the callable's name: a functools.partial's repr would show its arguments,
    # which is where users put passwords.
    target = getattr(fn, "func", fn)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or type(target).__name__
    return f"{module}.{name}" if module else name


class CallableFactory(ConnectionFactory):
    """Adapts any zero-argument callable; liveness is guessed from the connection's type."""

    def __init__(self, get_conn: Callable[[], Connection]) -> None:
        self._get_conn = get_conn
        self._checks: dict[type, Callable[[Connection], bool]] = {}

    def connect(self, *, read_only: bool = False) -> Connection:
        return self._get_conn()

    def is_usable(self, conn: Connection) -> bool:
        check = self._checks.get(type(conn))
        if check is None:
            check = self._checks[type(conn)] = liveness_check_for(conn)
        return check(conn)

    def ping(self, conn: Connection) -> None:
        ping = getattr(conn, "ping", None)
        if callable(ping):
            ping()
        elif callable(getattr(conn, "execute", None)):
            conn.execute("SELECT 1")
        elif callable(getattr(conn, "cursor", None)):
            cur = conn.cursor()
            try:
                cur.execute("SELECT 1")
                cur.fetchall()
            finally:
                cur.close()

    def needs_reset(self, conn: Connection) -> bool:
        return bool(getattr(conn, "in_transaction", False))  # sqlite3 tells without I/O

    def reset(self, conn: Connection) -> None:
        conn.rollback()

    def __repr__(self) -> str:
        return f"CallableFactory({_qualified_name(self._get_conn)})"


def as_factory(get_conn: Any) -> ConnectionFactory:
    """The factory behind a pool's `get_conn` argument; `TypeError` if it cannot be called."""
    if isinstance(get_conn, ConnectionFactory):
        return get_conn
    if isinstance(get_conn, type) and issubclass(get_conn, ConnectionFactory):
        # Callable, and would be taken for a function returning connections (factories).
        name = get_conn.__name__
        raise ArgumentTypeError(
            f"get_conn is the factory class {name}: pass a factory made from it, {name}(...)"
        )
    if not callable(get_conn):
        raise ArgumentTypeError(
            f"get_conn must be callable (a zero-argument function or a factory such as "
            f"qdbpool.factories.SQLite), not {type(get_conn).__name__}"
        )
    return CallableFactory(get_conn)
