"""SessionWrapper: what `pool.connect()` returns — the driver's connection, released by `with`.

A small proxy of our own rather than wrapt's ObjectProxy: on release it must stop reaching
the connection at once (another thread may hold it next), and re-pointing a wrapt proxy costs
more than a whole checkout (~1.5 us, measured). Attribute reads, writes and `isinstance` go
to the connection, as with wrapt.

What a wrapper reaches lives in a `_Checkout` of plain slots: the wrapper forwards attribute
writes to the connection, so a store into its own slots needs `object.__setattr__`, ten times
the cost of a plain store, and release and reuse make four of them.

Reuse: a released wrapper is kept by its connection's record and handed out again by the
next `connect()` of that connection, but only when nothing else refers to it (CPython's
reference count). Nobody can then tell it from a new one; a wrapper somebody still holds is
never brought back to life, so using it after release keeps raising.
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
        """Stop reaching the connection (before anyone else may get it); the record, if
        this checkout had not ended yet. A released wrapper someone keeps must not keep the
        record alive either: its thread's end closes the connection only once nothing
        refers to the record."""
        pooled = self.pooled
        self.conn = RELEASED
        self.pooled = None
        return pooled


_refcount = getattr(sys, "getrefcount", None)  # CPython's; elsewhere wrappers are not reused


def checkout_wrapper(pool: Pool, pooled: PooledConnection) -> SessionWrapper:
    """The wrapper for a new checkout of `pooled`: its spare one when nothing else can
    see it, else a new one."""
    if pooled.spare is not None:
        # Its refcount is then 2: the record's slot and getrefcount's argument (a new
        # reference: read from the slot, not from a local variable).
        unseen = (
            _refcount is not None
            and _refcount(pooled.spare) == 2
            and getweakrefcount(pooled.spare) == 0
        )
        spare, pooled.spare = pooled.spare, None
        if unseen:
            checkout = spare._session
            checkout.conn = pooled.raw
            checkout.pooled = pooled
            pooled.last_checkout = checkout
            return spare
    return SessionWrapper(pool, pooled)


class SessionWrapper:
    """Behaves as the driver's connection (attributes, isinstance, repr), except that
    `with conn:` and `conn.close()` give it back to the pool instead of closing it.

    One wrapper is one checkout. Once released, any use of it raises
    `ConnectionReleasedError`; releasing it again does nothing. A wrapper that is garbage
    collected unreleased is released then, with a warning in the log. Made by
    `Pool.connect()`; not meant to be constructed directly. It cannot be pickled or copied.
    """

    __slots__ = ("__weakref__", "_session")

    _session: Checkout

    def __init__(self, pool: Pool, pooled: PooledConnection) -> None:
        _set(self, "_session", Checkout(pool, pooled))

    # -- the connection's own surface ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:  # only for names that are not ours
        return getattr(self._session.conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._session.conn, name, value)  # e.g. psycopg's conn.autocommit = True

    def __delattr__(self, name: str) -> None:
        delattr(self._session.conn, name)

    @property
    def __wrapped__(self) -> Any:
        """The driver's connection itself (the name functools and wrapt use for it)."""
        conn = self._session.conn
        if conn is RELEASED:
            raise ConnectionReleasedError(_RELEASED_MESSAGE)
        return conn

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # so that isinstance(conn, psycopg.Connection) holds
        return type(self._session.conn)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._session.conn)) | {"close"})

    def __repr__(self) -> str:
        # The driver's own repr (psycopg's names host, port, user and database, never the
        # password), so that logs and debuggers show the connection, not our wrapper.
        return repr(self._session.conn)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise ArgumentTypeError("a pooled connection cannot be pickled or copied")

    # -- release ----------------------------------------------------------------------------

    @property
    def released(self) -> bool:
        """Whether this checkout was given back to the pool."""
        return self._session.conn is RELEASED

    def __enter__(self) -> SessionWrapper:
        if self._session.conn is RELEASED:
            raise ConnectionReleasedError(_RELEASED_MESSAGE)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        checkout = self._session
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
        self._release_from(self._session.pool)

    def _release_from(self, pool: Pool) -> None:
        if pool is not self._session.pool:
            raise ConfigurationError("this connection belongs to another pool")
        pooled = self._session.end()
        if pooled is not None:
            pooled.spare = self
            pool._checkin(pooled)

    def __del__(self) -> None:
        pooled = self._session.pooled
        if pooled is None or pooled.pid != os.getpid():
            return  # released; or a forked child's: the parent's connection is not ours
        self._session.end()
        logger.warning(
            "a connection from connect() was garbage collected without being released; "
            "released now (use `with pool.connect() as conn:`)"
        )
        self._session.pool._release_dropped(pooled)
