"""SessionWrapper: what `pool.connect()` returns — the driver's connection, released by `with`.

A small proxy of our own rather than wrapt's ObjectProxy: on release it must stop reaching
the connection at once (another thread may hold it next), and re-pointing a wrapt proxy costs
more than a whole checkout (~1.5 us, measured), while re-pointing a slot here costs ~50 ns.
Attribute reads, writes and `isinstance` go to the connection, as with wrapt.
"""

from __future__ import annotations

import logging
import os
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from qdbpool.errors import ArgumentTypeError, ConfigurationError, ConnectionReleasedError

if TYPE_CHECKING:
    from qdbpool.pool import Pool
    from qdbpool.pooled import PooledConnection

logger = logging.getLogger("qdbpool")

_RELEASED_MESSAGE = (
    "this connection was released to the pool; check out another with pool.connect()"
)

_set = object.__setattr__  # our own slots, past the forwarding __setattr__ below


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


class SessionWrapper:
    """Behaves as the driver's connection (attributes, isinstance, repr), except that
    `with conn:` and `conn.close()` give it back to the pool instead of closing it.

    One wrapper is one checkout. Once released, any use of it raises
    `ConnectionReleasedError`; releasing it again does nothing. A wrapper that is garbage
    collected unreleased is released then, with a warning in the log. Made by
    `Pool.connect()`; not meant to be constructed directly. It cannot be pickled or copied.
    """

    __slots__ = ("__weakref__", "_session_conn", "_session_pool", "_session_pooled")

    _session_pooled: PooledConnection | None

    def __init__(self, pool: Pool, pooled: PooledConnection) -> None:
        _set(self, "_session_conn", pooled.raw)
        _set(self, "_session_pool", pool)
        _set(self, "_session_pooled", pooled)
        pooled.session = weakref.ref(self)

    # -- the connection's own surface ---------------------------------------------------

    def __getattr__(self, name: str) -> Any:  # only for names that are not ours
        return getattr(self._session_conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._session_conn, name, value)  # e.g. psycopg's conn.autocommit = True

    def __delattr__(self, name: str) -> None:
        delattr(self._session_conn, name)

    @property
    def __wrapped__(self) -> Any:
        """The driver's connection itself (the name functools and wrapt use for it)."""
        conn = self._session_conn
        if conn is RELEASED:
            raise ConnectionReleasedError(_RELEASED_MESSAGE)
        return conn

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # so that isinstance(conn, psycopg.Connection) holds
        return type(self._session_conn)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._session_conn)) | {"close"})

    def __repr__(self) -> str:
        # The driver's own repr (psycopg's names host, port, user and database, never the
        # password), so that logs and debuggers show the connection, not our wrapper.
        return repr(self._session_conn)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise ArgumentTypeError("a pooled connection cannot be pickled or copied")

    # -- release ----------------------------------------------------------------------------

    @property
    def released(self) -> bool:
        """Whether this checkout was given back to the pool."""
        return self._session_conn is RELEASED

    def __enter__(self) -> SessionWrapper:
        if self._session_conn is RELEASED:
            raise ConnectionReleasedError(_RELEASED_MESSAGE)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session_conn is RELEASED:
            return  # released inside the block already
        pooled = self._session_pooled
        # Before the pool may hand the connection to anyone else; and a released wrapper
        # someone keeps must not keep the connection's record alive (its thread's end
        # closes the connection only once nothing refers to the record).
        _set(self, "_session_conn", RELEASED)
        _set(self, "_session_pooled", None)
        if exc is not None:
            self._session_pool._on_error(pooled, exc)
        self._session_pool._checkin(pooled)

    def close(self) -> None:
        """Release to the pool (the connection itself stays open for its next checkout)."""
        self._release_from(self._session_pool)

    def _release_from(self, pool: Pool) -> None:
        if pool is not self._session_pool:
            raise ConfigurationError("this connection belongs to another pool")
        if self._session_conn is not RELEASED:
            pooled = self._session_pooled
            _set(self, "_session_conn", RELEASED)
            _set(self, "_session_pooled", None)
            pool._checkin(pooled)

    def __del__(self) -> None:
        if self._session_conn is RELEASED:
            return
        pooled = self._session_pooled
        if pooled is None or pooled.pid != os.getpid():
            return  # a forked child: the parent's connection is not ours to release
        _set(self, "_session_conn", RELEASED)
        _set(self, "_session_pooled", None)
        logger.warning(
            "a connection from connect() was garbage collected without being released; "
            "released now (use `with pool.connect() as conn:`)"
        )
        self._session_pool._release_dropped(pooled)
