"""What an asyncio pool asks of a factory: the threaded protocol (qdbpool.protocol), awaited.

The pool decides *when* (checkout, release, error, close); the factory decides *how* for its
driver: open, close, ping, reset (all awaited, as they are I/O), and two looks that take no
I/O: `state_after_use` (the threaded `CLEAN` / `NEEDS_RESET` / `LOST`) and `generation_of`
(the threaded `Generation` counter, which a routing factory moves to make every connection
to a demoted host unfit at its next checkout).

A plain zero-argument `async def` (or any callable returning an awaitable connection) is
adapted by `CallableFactory`, which closes connections with their own `close()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from qdbpool.errors import ArgumentTypeError
from qdbpool.protocol import CLEAN, LOST, NEEDS_RESET, NEVER_STALE, Connection, Generation

__all__ = [
    "CLEAN",
    "LOST",
    "NEEDS_RESET",
    "CallableFactory",
    "Connection",
    "ConnectionFactory",
    "Generation",
    "as_factory",
]


async def maybe_await(value: object) -> object:
    """The value, awaited if it is awaitable: hooks and `close()` may be sync or async."""
    if inspect.isawaitable(value):
        return await value
    return value


class ConnectionFactory:
    """Base class of asyncio factories. Only `connect` is required; every other method has
    a safe default.

    The I/O methods are coroutines; `state_after_use`, `generation_of` and
    `is_disconnect` are plain methods, as the pool asks them on every release and must
    not yield to the event loop there.
    """

    #: True when a connection whose use was cancelled in the middle of an operation can
    #: be brought back by `reset`: the driver runs (or drops) the interrupted operation in
    #: order, so a reset awaited after it sees the connection as the server does. False
    #: (the safe default): such a connection is closed instead. aiosqlite's queue of
    #: operations is in order, so `SQLite` says True.
    cancel_safe: bool = False

    #: True when `connect(read_only=True)` opens a different kind of connection (a
    #: replica's): the pool then keeps the two apart. False: one kind serves both, and
    #: `read_only` reaches `connect` as False.
    routes_reads: bool = False

    async def connect(self, *, read_only: bool = False) -> Connection:
        """Open and return a new driver connection (for reads, with `read_only`, when the
        factory `routes_reads`)."""
        raise NotImplementedError

    async def close_connection(self, conn: Connection) -> None:
        """Close a driver connection for good (its own `close()`, awaited if need be)."""
        close = getattr(conn, "close", None)
        if close is not None:
            await maybe_await(close())

    async def close_interrupted(self, conn: Connection) -> None:
        """Close a driver connection whose use was interrupted in the middle of an
        operation (its task cancelled or timed out) when the factory is not `cancel_safe`:
        the operation may still be running on the server, and this is the factory's chance
        to stop it before (or while) the connection goes. The default: `close_connection`."""
        await self.close_connection(conn)

    async def ping(self, conn: Connection) -> None:
        """A round trip to the server; raises if the connection does not answer."""

    async def reset(self, conn: Connection) -> None:
        """Bring a released connection back to a clean state (roll back an open
        transaction). Awaited after any use that ended with an exception or a
        cancellation, and after a clean use that `state_after_use` calls NEEDS_RESET."""

    def state_after_use(self, conn: Connection) -> int:
        """CLEAN, NEEDS_RESET or LOST, without I/O (asked at every release). Raising
        counts as LOST."""
        return CLEAN

    def generation_of(self, conn: Connection) -> tuple[Generation, int]:
        """The counter that makes `conn` unfit once it moves past the value returned with
        it (asked once per new connection; compared at every checkout)."""
        return NEVER_STALE, 0

    def is_disconnect(self, conn: Connection, exc: BaseException) -> bool:
        """Whether `exc`, raised while using `conn`, means the connection itself is lost."""
        return isinstance(exc, (ConnectionError, EOFError))

    async def close(self) -> None:
        """Release what the factory itself holds; connections are the pool's."""


class CallableFactory(ConnectionFactory):
    """Adapts a zero-argument callable returning an awaitable connection (an `async def`)."""

    def __init__(self, get_conn: Callable[[], Awaitable[Connection]]) -> None:
        self._get_conn = get_conn

    async def connect(self, *, read_only: bool = False) -> Connection:
        return await self._get_conn()

    def __repr__(self) -> str:
        # The callable's name only: a partial's arguments may hold a password.
        target = getattr(self._get_conn, "func", self._get_conn)
        name = getattr(target, "__qualname__", None) or type(target).__name__
        return f"CallableFactory({name})"


def as_factory(get_conn: Any) -> ConnectionFactory:
    """The factory behind a pool's `get_conn` argument; `ArgumentTypeError` (a TypeError)
    if it is neither a factory nor callable."""
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
            f"get_conn must be a qdbpool.aio factory or a zero-argument async function, "
            f"not {type(get_conn).__name__}"
        )
    return CallableFactory(get_conn)
