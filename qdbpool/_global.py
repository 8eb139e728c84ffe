"""The process-wide pools: initialize() / instance() / close(), as in quasardb.pool.

One default pool (what `quasardb.pool` has), and any number of named ones for an
application that talks to several databases: `initialize(..., name="ts")`,
`instance("ts")`, `@with_conn(pool="ts")`.
"""

from __future__ import annotations

import atexit
from typing import Any

from qdbpool import _fork
from qdbpool.errors import ArgumentTypeError, PoolNotInitializedError
from qdbpool.pool import Pool
from qdbpool.singleton import SingletonPool

# The default pool. Read without the lock on every @with_conn call (one attribute load);
# written under it.
current: Pool | None = None
# The named pools, by name. Read without the lock too (one dict lookup per call).
named: dict[str, Pool] = {}
_lock = _fork.Lock()
_atexit_registered = False


def initialize(*args: Any, name: str | None = None, **kwargs: Any) -> Pool:
    """Create the global pool (or the pool called `name`) and return it; the pool it
    replaces is closed, unless it is still registered under another name.

    The arguments go to `SingletonPool(...)`. To use another strategy, pass a pool
    you made: `initialize(BoundedPool(get_conn, size=4))`.
    """
    global current, _atexit_registered
    _check_name(name)
    if len(args) == 1 and not kwargs and isinstance(args[0], Pool):
        new = args[0]
    else:
        new = SingletonPool(*args, **kwargs)
    with _lock:
        if name is None:
            previous, current = current, new
        else:
            previous, named[name] = named.get(name), new
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
        # A pool may be registered under several names; it is closed only once no name
        # refers to it any more.
        orphaned = None if previous is None or _registered_locked(previous) else previous
    if orphaned is not None:
        orphaned.close()
    return new


def _registered_locked(pool: Pool) -> bool:
    return pool is current or any(other is pool for other in named.values())


def instance(name: str | None = None) -> Pool:
    """The global pool (or the pool called `name`); `PoolNotInitializedError` if it was
    never initialized."""
    _check_name(name)
    pool = current if name is None else named.get(name)
    if pool is None:
        raise PoolNotInitializedError(not_initialized(name))
    return pool


def close(name: str | None = None) -> None:
    """Close the global pool (or the pool called `name`). `instance()` keeps returning
    it, closed, until the next `initialize()`, so late callers get PoolClosedError rather
    than a surprise."""
    _check_name(name)
    pool = current if name is None else named.get(name)
    if pool is not None:
        pool.close()


def not_initialized(name: str | None) -> str:
    if name is None:
        return "the global connection pool is not initialized: call qdbpool.initialize(...) first"
    return (
        f"the connection pool {name!r} is not initialized: call "
        f"qdbpool.initialize(..., name={name!r}) first"
    )


def _check_name(name: object) -> None:
    if name is not None and (not isinstance(name, str) or not name):
        raise ArgumentTypeError(f"a pool's name is a non-empty str, not {name!r}")


def _close_at_exit() -> None:
    # At exit nobody will release anything any more: close everything without waiting.
    for pool in [current, *named.values()]:
        if pool is not None:
            pool.close(timeout=0)
