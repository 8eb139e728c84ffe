"""SessionWrapper: what `pool.connect()` returns — the driver's connection, released by `with`."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import wrapt

if TYPE_CHECKING:
    from qdbpool.pool import Pool, PooledConnection


class SessionWrapper(wrapt.ObjectProxy[Any]):
    """Behaves as the driver's connection (attributes, isinstance, repr), except that
    `with conn:` and `conn.close()` give it back to the pool instead of closing it.

    One wrapper is one checkout: releasing it twice releases once. Made by
    `Pool.connect()`; not meant to be constructed directly. It cannot be pickled or copied.
    """

    def __init__(self, pool: Pool, pooled: PooledConnection) -> None:
        super().__init__(pooled.raw)
        self._self_pool = pool
        self._self_pooled = pooled
        self._self_released = False

    def __enter__(self) -> SessionWrapper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._self_pool._on_error(self._self_pooled, exc)
        self.close()

    def close(self) -> None:
        """Release to the pool (the connection stays open for this thread's next checkout)."""
        self._release_from(self._self_pool)

    def _release_from(self, pool: Pool) -> None:
        if pool is not self._self_pool:
            raise ValueError("this connection belongs to another pool")
        if not self._self_released:
            self._self_released = True
            pool._checkin(self._self_pooled)

    def __repr__(self) -> str:
        # The driver's own repr (psycopg's names host, port, user and database, never the
        # password), so that logs and debuggers show the connection, not our wrapper.
        return repr(self.__wrapped__)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a pooled connection cannot be pickled or copied")
