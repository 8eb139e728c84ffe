"""qdbpool: every thread gets its own database connection, injected where it is needed.

import qdbpool as pool
pool.initialize(uri="qdb://127.0.0.1:2836")

@pool.with_conn()
def load(conn, table): ...
"""

from qdbpool._global import close, initialize, instance
from qdbpool.bounded import BoundedPool
from qdbpool.errors import (
    ArgumentTypeError,
    ConfigurationError,
    ConnectionReleasedError,
    NoHostAvailableError,
    PoolClosedError,
    PoolNotInitializedError,
    PoolTimeoutError,
    QdbPoolError,
)
from qdbpool.pool import Pool
from qdbpool.session import SessionWrapper
from qdbpool.singleton import SingletonPool
from qdbpool.stats import PoolStats
from qdbpool.with_conn import with_conn

__all__ = [
    "ArgumentTypeError",
    "BoundedPool",
    "ConfigurationError",
    "ConnectionReleasedError",
    "NoHostAvailableError",
    "Pool",
    "PoolClosedError",
    "PoolNotInitializedError",
    "PoolStats",
    "PoolTimeoutError",
    "QdbPoolError",
    "SessionWrapper",
    "SingletonPool",
    "close",
    "initialize",
    "instance",
    "with_conn",
]
