"""The process-wide pool: initialize() / instance() / close(), as in quasardb.pool."""

from __future__ import annotations

import atexit
import threading
from typing import Any

from qdbpool import _fork
from qdbpool.errors import PoolNotInitializedError
from qdbpool.pool import Pool
from qdbpool.singleton import SingletonPool

# Read without the lock on every @with_conn call (one attribute load); written under it.
current: Pool | None = None
_lock = threading.Lock()
_atexit_registered = False


def initialize(*args: Any, **kwargs: Any) -> Pool:
    """Create the global pool and return it; a previous global pool is closed.

    The arguments go to `SingletonPool(...)`. To use another strategy, pass a pool
    you made: `initialize(BoundedPool(get_conn, size=4))`.
    """
    global current, _atexit_registered
    if len(args) == 1 and not kwargs and isinstance(args[0], Pool):
        new = args[0]
    else:
        new = SingletonPool(*args, **kwargs)
    with _lock:
        previous, current = current, new
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    if previous is not None and previous is not new:
        previous.close()
    return new


def instance() -> Pool:
    """The global pool; `PoolNotInitializedError` if `initialize()` was never called."""
    pool = current
    if pool is None:
        raise PoolNotInitializedError(
            "the global connection pool is not initialized: call qdbpool.initialize(...) first"
        )
    return pool


def close() -> None:
    """Close the global pool. `instance()` keeps returning it, closed, until the next
    `initialize()`, so late callers get PoolClosedError rather than a surprise."""
    pool = current
    if pool is not None:
        pool.close()


def _close_at_exit() -> None:
    # At exit nobody will release anything any more: close everything without waiting.
    pool = current
    if pool is not None:
        pool.close(timeout=0)


class _ForkHook:
    def _after_fork_in_child(self) -> None:
        global _lock
        _lock = threading.Lock()  # another thread may have held it at the fork


_fork_hook = _ForkHook()
_fork.watch(_fork_hook)
