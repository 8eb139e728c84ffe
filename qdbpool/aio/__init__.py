"""qdbpool.aio: the same API for asyncio, awaited.

import qdbpool.aio as pool
from qdbpool.aio.factories import SQLite

await pool.initialize(SQLite("app.db"), size=10, burst_limit=20)

@pool.with_conn()
async def save(conn, row): ...

async with pool.instance().connect() as conn: ...
await pool.close()
"""

from qdbpool.aio._global import close, initialize, instance
from qdbpool.aio.errors import WrongEventLoopError
from qdbpool.aio.pool import BoundedPool
from qdbpool.aio.protocol import ConnectionFactory
from qdbpool.aio.with_conn import with_conn
from qdbpool.errors import (
    ConfigurationError,
    PoolClosedError,
    PoolNotInitializedError,
    PoolTimeoutError,
    QdbPoolError,
)
from qdbpool.stats import PoolStats

__all__ = [
    "BoundedPool",
    "ConfigurationError",
    "ConnectionFactory",
    "PoolClosedError",
    "PoolNotInitializedError",
    "PoolStats",
    "PoolTimeoutError",
    "QdbPoolError",
    "WrongEventLoopError",
    "close",
    "initialize",
    "instance",
    "with_conn",
]
