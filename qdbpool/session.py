"""SessionWrapper: what `pool.connect()` returns — the driver's connection, released by `with`.

A small proxy of our own rather than wrapt's ObjectProxy: on release it must stop reaching
the connection at once (another thread may hold it next), and re-pointing a wrapt proxy costs
more than a whole checkout (~1.5 us, measured). Attribute reads, writes and `isinstance` go
to the connection, as with wrapt.

What a wrapper reaches lives in a `Checkout` of plain slots: the wrapper forwards attribute
writes to the connection, so a store into its own slots needs `object.__setattr__`, ten times
the cost of a plain store, and release and reuse make four of them.

Reuse: a released wrapper is kept by its connection's record and handed out again by the
next `connect()` of that connection, but only when nothing else refers to it (CPython's
reference count). Nobody can then tell it from a new one; a wrapper somebody still holds is
never brought back to life, so using it after release keeps raising. It pays off where a
function makes one checkout and returns; in `for ...: with pool.connect() as conn:` the name
`conn` still holds the previous wrapper at the next `connect()`, so each one is new.
"""

from __future__ import annotations

import logging
import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn
from weakref import getweakrefcount

from qdbpool.errors import ArgumentTypeError, ConfigurationError, ConnectionReleasedError

if TYPE_CHECKING:
    from qdbpool.pool import Pool
    from qdbpool.pooled import PooledConnection

logger = logging.getLogger("qdbpool")

_RELEASED_MESSAGE = (
    "this connection was released to the pool; check out another with pool.connect()"
)

_set = object.__setattr__  # our own slot, past the forwarding __setattr__ below


class _Released:
    """What a released wrapper points to: every use raises, nothing reaches a connection."""

    __slots__ = ()

    def __getattr__(self, name: str) -> NoReturn:
        raise ConnectionReleasedError(
            f"this connection was released to the pool and cannot be used any more "
            f"(tried: {name!r}); check out another with pool.connect()"
        )

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        self.__getattr__(name)

    def __delattr__(self, name: str) -> NoReturn:
        self.__getattr__(name)

    def __repr__(self) -> str:
        return "<released connection>"


RELEASED: Any = _Released()


class Checkout:
    """What one wrapper reaches: the connection and its record while checked out,
    `RELEASED` and None once released. Its record keeps the latest one (`last_checkout`),
    so that `pool.release(raw)` can end it."""

    __slots__ = ("conn", "pool", "pooled")

    def __init__(self, pool: Pool, pooled: PooledConnection) -> None:
        self.conn: Any = pooled.raw
        self.pool = pool
        self.pooled: PooledConnection | None = pooled
        pooled.last_checkout = self

    def end(self) -> PooledConnection | None:
        """Stop reaching the connection (before anyone else may get it). Returns the
        record, or None if this checkout had ended already. A released wrapper someone
        keeps must not keep the record alive either: its thread's end closes the connection
        only once nothing refers to the record."""
        pooled = self.pooled
        self.conn = RELEASED
        self.pooled = None
        return pooled


# Reference counts tell "nobody else" only on CPython; elsewhere wrappers are not reused.
_refcount = sys.getrefcount if sys.implementation.name == "cpython" else None
# A spare's reference count when only the record holds it, counted as checkout_wrapper
# counts: the record's slot, the local variable `spare`, and getrefcount's argument read
# anew from the slot (a local passed as the argument may be borrowed, not counted, on
# Python 3.14).
_ONLY_THE_RECORD = 3


def checkout_wrapper(pool: Pool, pooled: PooledConnection) -> SessionWrapper:
    """The wrapper for a new checkout of `pooled`: its spare one when nothing else can
    see it, else a new one."""
    spare = pooled.spare
    if spare is None:
        return SessionWrapper(pool, pooled)
    # `spare` is the object both checked and reused: another thread releasing a wrapper of
    # this record may put that one in the slot at any point here, and it still holds it.
    unseen = (
        _refcount is not None
        and _refcount(pooled.spare) == _ONLY_THE_RECORD
        and pooled.spare is spare
        and getweakrefcount(spare) == 0
    )
    pooled.spare = None
    if not unseen:
        return SessionWrapper(pool, pooled)
    checkout = spare._pool_checkout
    checkout.conn = pooled.raw
    checkout.pooled = pooled
    pooled.last_checkout = checkout
    return spare


class SessionWrapper:
    """Behaves as the driver's connection (attributes, isinstance, repr), except that
    `with conn:` and `conn.close()` give it back to the pool instead of closing it.

    One wrapper is one checkout. Once released, any use of it raises
    `ConnectionReleasedError`; releasing it again does nothing. A wrapper that is garbage
    collected unreleased is released then, with a warning in the log. Made by
    `Pool.connect()`; not meant to be constructed directly. It cannot be pickled or copied.
    """

    __slots__ = ("__weakref__", "_pool_checkout")

    _pool_checkout: Checkout

    def __init__(self, pool: Pool, pooled: PooledConnection) -> None:
        _set(self, "_pool_checkout", Checkout(pool, pooled))

    # -- the connection's own surface ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:  # only for names that are not ours
        return getattr(self._pool_checkout.conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pool_checkout.conn, name, value)  # e.g. psycopg's conn.autocommit = True

    def __delattr__(self, name: str) -> None:
        delattr(self._pool_checkout.conn, name)

    @property
    def __wrapped__(self) -> Any:
        """The driver's connection itself (the name functools and wrapt use for it)."""
        conn = self._pool_checkout.conn
        if conn is RELEASED:
            raise ConnectionReleasedError(_RELEASED_MESSAGE)
        return conn

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # so that isinstance(conn, psycopg.Connection) holds
        return type(self._pool_checkout.conn)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._pool_checkout.conn)) | {"close"})

    def __repr__(self) -> str:
        # The driver's own repr (psycopg's names host, port, user and database, never the
        # password), so that logs and debuggers show the connection, not our wrapper; the
        # factory blanks out what the driver does not (psycopg2's sslpassword).
        checkout = self._pool_checkout
        conn = checkout.conn
        return repr(conn) if conn is RELEASED else checkout.pool.factory.describe(conn)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise ArgumentTypeError("a pooled connection cannot be pickled or copied")

    # -- release ----------------------------------------------------------------------------

    @property
    def released(self) -> bool:
        """Whether this checkout was given back to the pool."""
        return self._pool_checkout.conn is RELEASED

    def __enter__(self) -> SessionWrapper:
        if self._pool_checkout.conn is RELEASED:
            raise ConnectionReleasedError(_RELEASED_MESSAGE)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        checkout = self._pool_checkout
        pooled = checkout.pooled
        if pooled is None:
            return  # released inside the block already
        checkout.conn = RELEASED  # checkout.end(), inlined: every `with` block's path
        checkout.pooled = None
        pooled.spare = self
        if exc is not None:
            checkout.pool._on_error(pooled, exc)
        checkout.pool._checkin(pooled)

    def close(self) -> None:
        """Release to the pool (the connection itself stays open for its next checkout)."""
        self._release_from(self._pool_checkout.pool)

    def _release_from(self, pool: Pool) -> None:
        if pool is not self._pool_checkout.pool:
            raise ConfigurationError("this connection belongs to another pool")
        pooled = self._pool_checkout.end()
        if pooled is not None:
            pooled.spare = self
            pool._checkin(pooled)

    def __del__(self) -> None:
        pooled = self._pool_checkout.pooled
        if pooled is None or pooled.pid != os.getpid():
            return  # released; or a forked child's: the parent's connection is not ours
        pool = self._pool_checkout.pool
        self._pool_checkout.end()
        logger.warning(
            "a connection from connect() was garbage collected without being released; "
            "released now (use `with pool.connect() as conn:`)"
        )
        pool._from_finalizer(lambda: pool._release_dropped(pooled))
