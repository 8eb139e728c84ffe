"""qdbpool.aio.factories.MySQL (aiomysql) against real MariaDB servers: writes to the
primary and reads to the replica, through a role switch; a body's open transaction never
reaches the next holder; a statement whose task was cancelled or timed out is killed on
the server, not left to run; options aiomysql does not take are refused by name, and the
password appears in no repr or message. Every test runs on the standard loop and uvloop.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import quote

import pytest

import qdbpool.aio as aio
from qdbpool.aio.factories import MySQL
from qdbpool.errors import ConfigurationError, NoHostAvailableError
from qdbpool.testing.proxy import FaultProxy

APP_PASSWORD = "Pw/@:%s3cr3t-7xq"  # the suite's app user's (tests/mysql/conftest.py)


async def scalar(conn: Any, sql: str, *args: Any) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(sql, args or None)
        row = await cur.fetchone()
    return None if row is None else row[0]


def test_writes_go_to_the_primary_and_reads_to_the_replica_through_a_role_switch(
    own_pair: Any, app_dsn: Any, run: Any, until: Any
) -> None:
    async def main() -> None:
        factory = MySQL(app_dsn(own_pair), refresh_delay=0.1, refresh_timeout=2)
        pool = aio.BoundedPool(factory, size=2, timeout=20)
        try:
            await factory.ready(1, 1, timeout=20)

            async def where(read_only: bool) -> tuple[int, int]:
                async with pool.connect(read_only=read_only) as conn:
                    port = await scalar(conn, "SELECT @@port")
                    read_only_flag = await scalar(conn, "SELECT @@read_only")
                return int(port), int(read_only_flag)

            assert await where(False) == (own_pair.primary.port, 0)
            assert await where(True) == (own_pair.replica.port, 1)
            old_primary = own_pair.primary
            await asyncio.to_thread(own_pair.switch_roles)
            await until(
                lambda: any(
                    h.role.value == "primary" and h.address.port != old_primary.port
                    for h in factory.hosts()
                ),
                "the monitor saw the new primary",
            )
            assert await where(False) == (own_pair.primary.port, 0)
            assert await where(True) == (old_primary.port, 1)
        finally:
            await pool.close()
            await factory.close()

    run(main)


def test_a_transaction_left_open_by_the_body_is_rolled_back_before_the_next_holder(
    server: Any, app_dsn: Any, run: Any
) -> None:
    async def main() -> None:
        factory = MySQL(app_dsn(server))
        pool = aio.BoundedPool(factory, size=1, timeout=20)
        table = f"t_{random.getrandbits(32)}"
        try:
            async with pool.connect() as conn:
                await scalar(conn, f"CREATE TABLE {table} (n int) ENGINE=InnoDB")
            with pytest.raises(RuntimeError):
                async with pool.connect() as conn:
                    await scalar(conn, "BEGIN")
                    await scalar(conn, f"INSERT INTO {table} VALUES (1)")
                    raise RuntimeError("the body fails mid-transaction")
            async with pool.connect() as conn:
                assert not conn.get_transaction_status()
                assert await scalar(conn, f"SELECT count(*) FROM {table}") == 0
                await scalar(conn, f"DROP TABLE {table}")
        finally:
            await pool.close()
            await factory.close()

    run(main)


@pytest.mark.parametrize("interrupt", ["cancel", "timeout"])
def test_an_interrupted_statement_is_killed_on_the_server(
    server: Any, app_dsn: Any, run: Any, interrupt: str, until: Any
) -> None:
    """aiomysql closes a connection whose task was cancelled while it waited for a result,
    but MariaDB runs the statement on to its end: the pool must kill it. (SLEEP() would
    not do here: MariaDB ends it by itself within 5 s of the client's going. BENCHMARK()
    runs on for minutes.)"""
    marker = f"qdbpool-aio-mysql-{random.getrandbits(32)}"
    sleep_sql = f"SELECT BENCHMARK(1000000000000, MD5('x')) /* {marker} */"

    def running() -> list[Any]:
        return server.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s",
            [f"%{marker} */"],
        )

    async def main() -> None:
        factory = MySQL(app_dsn(server))
        pool = aio.BoundedPool(factory, size=1, burst_limit=1, timeout=20)
        started = asyncio.Event()

        async def victim() -> None:
            async with pool.connect() as conn:
                started.set()
                if interrupt == "timeout":
                    await asyncio.wait_for(scalar(conn, sleep_sql), 0.5)
                else:
                    await scalar(conn, sleep_sql)

        try:
            task = asyncio.create_task(victim())
            await asyncio.wait_for(started.wait(), 10)
            await until(lambda: len(running()) == 1, "the statement running", 10.0)
            if interrupt == "cancel":
                task.cancel()
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            expected = asyncio.CancelledError if interrupt == "cancel" else asyncio.TimeoutError
            assert isinstance(outcome, expected), repr(outcome)
            await until(lambda: running() == [], "the interrupted statement killed", 4.0)
            async with pool.connect() as conn:  # the pool still works
                assert await scalar(conn, "SELECT 1") == 1
        finally:
            await pool.close()
            await factory.close()

    run(main)


def test_options_aiomysql_does_not_take_are_refused_by_name(server: Any, app_dsn: Any) -> None:
    with pytest.raises(ConfigurationError, match="read_timeout"):
        MySQL(app_dsn(server), read_timeout=3)  # PyMySQL's, not aiomysql's
    with pytest.raises(ConfigurationError, match="no_such_option"):
        MySQL(app_dsn(server), no_such_option=1)
    with pytest.raises(ConfigurationError, match="write_timeout"):
        MySQL(app_dsn(server) + "?write_timeout=3")


def test_the_password_appears_in_no_repr_or_message(server: Any, app_dsn: Any, run: Any) -> None:
    async def main() -> None:
        factory = MySQL(app_dsn(server).replace("appdb", "no_such_db"), acquire_timeout=1)
        try:
            assert APP_PASSWORD not in repr(factory)
            with pytest.raises(Exception) as raised:
                await factory.connect()
            assert APP_PASSWORD not in str(raised.value)
            assert "no_such_db" in str(raised.value) or "1044" in str(raised.value)
        finally:
            await factory.close()

    run(main)


def test_opening_to_a_server_that_accepts_and_says_nothing_ends_within_connect_timeout(
    server: Any, app_dsn: Any, run: Any, closing: Any
) -> None:
    # aiomysql bounds only the TCP connect by connect_timeout: through a stalled proxy the
    # caller waited for the server's greeting until the pool's own timeout (30 s here).
    proxy = closing(FaultProxy(server.host, server.port))
    dsn = app_dsn(server).replace(f":{server.port}/", f":{proxy.port}/")

    async def main() -> None:
        factory = MySQL(dsn, connect_timeout=1, acquire_timeout=1, refresh_delay=60)
        pool = aio.BoundedPool(factory, size=1, timeout=30)
        try:
            await factory.ready(masters_count=1, timeout=10)
            proxy.stall()
            started = asyncio.get_running_loop().time()
            with pytest.raises(NoHostAvailableError):
                async with pool.connect():
                    pass
            assert asyncio.get_running_loop().time() - started < 10
            assert pool.stats().open == 0
        finally:
            proxy.pass_through()
            await pool.close()
            await factory.close()

    run(main)


def test_no_write_connection_is_opened_to_a_server_made_read_only_since_its_check(
    own_server: Any, app_dsn: Any, run: Any
) -> None:
    # As the threaded factory: a primary made read-only since its check is refused for
    # writes at connect, rather than failing the first write of the task that gets it.
    async def main() -> None:
        factory = MySQL(app_dsn(own_server), acquire_timeout=1, refresh_delay=60)
        pool = aio.BoundedPool(factory, size=1, timeout=30)
        try:
            await factory.ready(masters_count=1, timeout=10)
            await asyncio.to_thread(own_server.sql, "SET GLOBAL read_only = ON")
            with pytest.raises(NoHostAvailableError, match="no primary"):
                async with pool.connect():
                    pass
            async with pool.connect(read_only=True) as conn:
                assert await scalar(conn, "SELECT @@global.read_only") == 1
        finally:
            await pool.close()
            await factory.close()

    run(main)


def test_a_password_beyond_latin1_connects(server: Any, run: Any) -> None:
    # aiomysql, too, sends a str password as Latin-1 (and '€' has none).
    server.create_user("aio_euro", "s3cr€t-pw", "appdb")
    dsn = f"mysql://aio_euro:{quote('s3cr€t-pw', safe='')}@{server.host}:{server.port}/appdb"

    async def main() -> None:
        factory = MySQL(dsn, acquire_timeout=3)
        pool = aio.BoundedPool(factory, size=1, timeout=10)
        try:
            async with pool.connect() as conn:
                assert await scalar(conn, "SELECT CURRENT_USER()") == "aio_euro@%"
        finally:
            await pool.close()
            await factory.close()

    run(main)
