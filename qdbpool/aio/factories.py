"""Factories for qdbpool.aio: `SQLite`, over aiosqlite (the `aio` extra); `Postgres`, over
psycopg 3's AsyncConnection (the `postgres` extra), `AsyncPG`, over asyncpg (the `asyncpg`
extra), and `MySQL`, over aiomysql (the `aiomysql` extra): those three are imported on
first use, so that SQLite needs none of them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qdbpool.aio.protocol import CLEAN, NEEDS_RESET, ConnectionFactory
from qdbpool.errors import ArgumentTypeError

if TYPE_CHECKING:
    import aiosqlite

    from qdbpool.aio.asyncpg import AsyncPG
    from qdbpool.aio.mysql import MySQL
    from qdbpool.aio.postgres import Postgres

__all__ = ["AsyncPG", "MySQL", "Postgres", "SQLite"]


def __getattr__(name: str) -> Any:
    if name == "Postgres":
        from qdbpool.aio.postgres import Postgres

        return Postgres
    if name == "AsyncPG":
        from qdbpool.aio.asyncpg import AsyncPG

        return AsyncPG
    if name == "MySQL":
        from qdbpool.aio.mysql import MySQL

        return MySQL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SQLite(ConnectionFactory):
    """Opens `aiosqlite.connect(path, **connect_kwargs)` per connection.

    A use that ended with an exception or a cancellation is followed by a rollback, queued
    behind whatever the connection was still doing (aiosqlite runs one connection's
    operations in order, on a thread of its own): so the next holder never gets it with a
    transaction open.
    """

    cancel_safe = True

    def __init__(self, path: str | os.PathLike[str] = ":memory:", **connect_kwargs: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentTypeError(
                f"SQLite path must be a str or os.PathLike, not {type(path).__name__}"
            )
        self.path = os.fspath(path)
        self._connect_kwargs = connect_kwargs

    async def connect(self, *, read_only: bool = False) -> aiosqlite.Connection:
        import aiosqlite  # the `aio` extra: needed only once a connection is opened

        return await aiosqlite.connect(self.path, **self._connect_kwargs)

    async def close_connection(self, conn: aiosqlite.Connection) -> None:
        await conn.close()

    async def ping(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("SELECT 1") as cursor:
            await cursor.fetchall()

    async def reset(self, conn: aiosqlite.Connection) -> None:
        await conn.rollback()

    def state_after_use(self, conn: aiosqlite.Connection) -> int:
        # Raises (ValueError) once the connection is closed: the pool counts that as LOST.
        return NEEDS_RESET if conn.in_transaction else CLEAN

    def is_disconnect(self, conn: aiosqlite.Connection, exc: BaseException) -> bool:
        # An embedded database has no link to lose: only a closed handle is unusable.
        try:
            conn.in_transaction  # noqa: B018 - raises once closed
        except ValueError:
            return True
        return False

    def __repr__(self) -> str:
        return f"SQLite({self.path!r})"
