"""Factories: callables that open new driver connections and know their database.

Postgres and MySQL are imported on first use, so that users of the other factories need
neither psycopg nor PyMySQL installed.
"""

from typing import TYPE_CHECKING, Any

from qdbpool.factories.quasardb import QuasarDB
from qdbpool.factories.sqlite import SQLite
from qdbpool.protocol import (
    CLEAN,
    LOST,
    NEEDS_RESET,
    CallableFactory,
    ConnectionFactory,
    as_factory,
)

if TYPE_CHECKING:
    from qdbpool.factories.mysql import MySQL
    from qdbpool.factories.postgres import Postgres

__all__ = [
    "CLEAN",
    "LOST",
    "NEEDS_RESET",
    "CallableFactory",
    "ConnectionFactory",
    "MySQL",
    "Postgres",
    "QuasarDB",
    "SQLite",
    "as_factory",
]


def __getattr__(name: str) -> Any:
    if name == "Postgres":
        from qdbpool.factories.postgres import Postgres

        return Postgres
    if name == "MySQL":
        from qdbpool.factories.mysql import MySQL

        return MySQL
    raise AttributeError(f"module 'qdbpool.factories' has no attribute {name!r}")
