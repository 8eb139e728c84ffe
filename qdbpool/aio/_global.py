"""The process-wide asyncio pool: initialize() / instance() / close(), awaited.

Separate from the threaded global pool (`qdbpool.initialize`): a program may have both,
say a threaded pool for its worker threads and an asyncio one for its event loop.
"""

from __future__ import annotations

import logging
from typing import Any

from qdbpool.aio.errors import WrongEventLoopError
from qdbpool.aio.pool import BoundedPool
from qdbpool.errors import PoolNotInitializedError

logger = logging.getLogger("qdbpool")

# The global pool. Read on every @with_conn call (one attribute load).
current: BoundedPool | None = None

NOT_INITIALIZED = (
    "the global asyncio connection pool is not initialized: await qdbpool.aio.initialize(...) first"
)


async def initialize(*args: Any, **kwargs: Any) -> BoundedPool:
    """Create the global asyncio pool, open its `pre_create` connections, and return it;
    the pool it replaces is closed.

    The arguments go to `BoundedPool(...)`; or pass a pool you made:
    `await initialize(BoundedPool(factory, size=4))`. A previous pool that serves another
    event loop (say, that of an earlier `asyncio.run`) cannot be closed from this one: it
    is dropped, with a warning, and its connections are left to the garbage collector.

    If opening fails, its error is raised and the global pool stays as it was; a pool made
    here from the arguments is closed first (its factory too), one passed in is left open.
    """
    global current
    made_here = not (len(args) == 1 and not kwargs and isinstance(args[0], BoundedPool))
    new = BoundedPool(*args, **kwargs) if made_here else args[0]
    try:
        await new.open()
    except BaseException:
        if made_here:
            # Nobody else can close it: what it opened (and its factory's monitor) must not
            # outlive the failure, e.g. in a retry loop at start-up. A pool of the caller's
            # is the caller's to close, or to pass again.
            await new.close(timeout=0)
        raise
    previous, current = current, new
    if previous is not None and previous is not new:
        try:
            await previous.close()
        except WrongEventLoopError:
            logger.warning(
                "the previous global asyncio pool served another event loop: dropped unclosed"
            )
    return new


def instance() -> BoundedPool:
    """The global asyncio pool; `PoolNotInitializedError` before `initialize()`."""
    pool = current
    if pool is None:
        raise PoolNotInitializedError(NOT_INITIALIZED)
    return pool


async def close(timeout: float = 5.0) -> None:
    """Close the global asyncio pool (see `BoundedPool.close`). `instance()` keeps
    returning it, closed, until the next `initialize()`, so late callers get
    `PoolClosedError`. There is no close at exit: no event loop runs then."""
    pool = current
    if pool is not None:
        await pool.close(timeout)
