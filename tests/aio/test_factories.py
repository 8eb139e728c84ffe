"""qdbpool.aio.factories.SQLite over aiosqlite, and the protocol's defaults."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qdbpool.aio import BoundedPool, PoolStats
from qdbpool.aio.factories import SQLite
from qdbpool.aio.protocol import CLEAN, LOST, NEEDS_RESET, ConnectionFactory, as_factory

pytest.importorskip("aiosqlite")

Run = Callable[..., Any]


def test_sqlite_tells_clean_from_in_a_transaction_from_closed(run: Run) -> None:
    async def main() -> None:
        factory = SQLite(":memory:")
        conn = await factory.connect()
        assert factory.state_after_use(conn) == CLEAN
        await conn.execute("CREATE TABLE t (x)")
        await conn.execute("INSERT INTO t VALUES (1)")
        assert factory.state_after_use(conn) == NEEDS_RESET
        await factory.reset(conn)
        assert factory.state_after_use(conn) == CLEAN
        await factory.ping(conn)
        await factory.close_connection(conn)
        with pytest.raises(ValueError):
            factory.state_after_use(conn)  # which the pool counts as LOST
        assert factory.is_disconnect(conn, RuntimeError())

    run(main)


def test_a_pool_over_sqlite_shares_a_file_between_its_connections(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with BoundedPool(SQLite(tmp_path / "db.sqlite3"), size=2) as pool:
            async with pool.connect() as conn:
                await conn.execute("CREATE TABLE t (x)")
                await conn.commit()

            async def insert(n: int) -> None:
                async with pool.connect() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", (n,))
                    await conn.commit()

            await asyncio.gather(*(insert(n) for n in range(10)))
            async with pool.connect() as conn, conn.execute("SELECT count(*) FROM t") as cur:
                assert await cur.fetchone() == (10,)
            stats = pool.stats()
            assert isinstance(stats, PoolStats)  # the threaded pools' type, same keys
            assert (stats.open, stats.created, stats.in_use) == (2, 2, 0)

    run(main)


def test_sqlite_refuses_a_path_that_is_not_one() -> None:
    with pytest.raises(TypeError, match="path"):
        SQLite(3)  # type: ignore[arg-type]


def test_sqlite_repr_shows_the_path() -> None:
    assert repr(SQLite("app.db")) == "SQLite('app.db')"


def test_the_protocol_defaults_are_safe(run: Run) -> None:
    class Closing:
        closed = False

        def close(self) -> None:  # a sync close() is awaited only if it returns an awaitable
            self.closed = True

    async def main() -> None:
        factory = ConnectionFactory()
        conn = Closing()
        assert factory.state_after_use(conn) == CLEAN
        assert not factory.cancel_safe
        assert factory.is_disconnect(conn, ConnectionResetError())
        assert not factory.is_disconnect(conn, KeyError())
        await factory.ping(conn)
        await factory.reset(conn)
        await factory.close_connection(conn)
        assert conn.closed
        with pytest.raises(NotImplementedError):
            await factory.connect()

    run(main)
    assert LOST not in (CLEAN, NEEDS_RESET)


def test_as_factory_adapts_an_async_function_and_refuses_the_rest() -> None:
    async def get_conn() -> object:
        return object()

    factory = as_factory(get_conn)
    assert "get_conn" in repr(factory)
    assert as_factory(factory) is factory
    with pytest.raises(TypeError, match="get_conn"):
        as_factory("sqlite:///x")
