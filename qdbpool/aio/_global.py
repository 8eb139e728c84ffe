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
    """
    global current
    if len(args) == 1 and not kwargs and isinstance(args[0], BoundedPool):
        new = args[0]
    else:
        new = BoundedPool(*args, **kwargs)
    await new.open()
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
