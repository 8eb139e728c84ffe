"""qdbpool.aio over a real PostgreSQL cluster (primary + 2 streaming standbys): the asyncio
PostgreSQL factories (psycopg 3's AsyncConnection and asyncpg) route writes to the primary
and reads to replicas, follow a failover and a demotion with tasks, never block the event
loop while they wait for a host, and leave nothing running on the server after a storm of
cancellations. Every test runs over both, on the standard event loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import qdbpool.aio as aio
from qdbpool.aio.factories import AsyncPG, Postgres
from qdbpool.cluster import Role
from qdbpool.testing.proxy import FaultProxy

WHERE = "SELECT inet_server_port(), pg_is_in_recovery()"


class Client:
    """One asyncio PostgreSQL factory and how its connections run the tests' statements:
    psycopg's (a transaction opened by the first statement, committed by commit()) or
    asyncpg's (autocommit, transactions only when asked)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def factory(self, dsn: str, **kwargs: Any) -> Any:
        return Postgres(dsn, **kwargs) if self.name == "psycopg" else AsyncPG(dsn, **kwargs)

    async def execute(self, conn: Any, sql: str, *args: Any) -> None:
        if self.name == "psycopg":
            await conn.execute(sql.replace("$1", "%s"), args or None)
        else:
            await conn.execute(sql, *args)

    async def where(self, conn: Any) -> tuple[int, bool]:
        if self.name == "psycopg":
            cur = await conn.execute(WHERE)
            row = await cur.fetchone()
        else:
            row = await conn.fetchrow(WHERE)
        return int(row[0]), bool(row[1])

    async def commit(self, conn: Any) -> None:
        if self.name == "psycopg":
            await conn.commit()

    def named(self, name: str) -> dict[str, Any]:
        """The factory keywords that set the sessions' application_name."""
        if self.name == "psycopg":
            return {"application_name": name}
        return {"server_settings": {"application_name": name}}

    async def begin(self, conn: Any) -> None:
        """A transaction open from here on."""
        await self.execute(conn, "BEGIN" if self.name == "asyncpg" else "SELECT 1")

    def backend_pid(self, conn: Any) -> int:
        """The process id of the connection's server session."""
        return int(conn.info.backend_pid if self.name == "psycopg" else conn.get_server_pid())

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["psycopg", "asyncpg"])
def client(request: pytest.FixtureRequest) -> Client:
    return Client(request.param)


def test_writes_go_to_the_primary_reads_to_a_replica_and_a_task_holds_one_of_each(
    shared_cluster: Any, run: Any, client: Client
) -> None:
    standbys = {n.port for n in shared_cluster.standbys}

    async def main() -> None:
        factory = client.factory(shared_cluster.multi_host_dsn())
        async with aio.BoundedPool(factory, size=4) as pool:
            await factory.ready(1, 2, timeout=10)

            @aio.with_conn(pool=pool, read_only=True)
            async def read(conn: Any) -> tuple[int, bool]:
                return await client.where(conn)

            @aio.with_conn(pool=pool)
            async def write_then_read(conn: Any) -> tuple[Any, ...]:
                await client.execute(conn, "CREATE TEMP TABLE written (x int)")
                return await client.where(conn), await read()  # the read while the write is held

            (w_port, w_rec), (r_port, r_rec) = await write_then_read()
            assert (w_port, w_rec) == (shared_cluster.primary.port, False)
            assert r_port in standbys and r_rec is True
            assert pool.stats().open == 2
            results = await asyncio.gather(*(read() for _ in range(20)))
            assert {port for port, _ in results} <= standbys
            assert all(rec for _, rec in results)

    run(main)


@dataclass
class Call:
    began: float
    ended: float = 0.0
    port: int | None = None
    in_recovery: bool | None = None
    error: BaseException | None = None


@dataclass
class Load:
    """Writer and reader tasks, one call every 10 ms each, each call logged."""

    pool: aio.BoundedPool
    client: Client
    writes: list[list[Call]] = field(default_factory=list)
    reads: list[list[Call]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, writers: int, readers: int) -> None:
        for read_only, logs, count in ((False, self.writes, writers), (True, self.reads, readers)):
            for _ in range(count):
                log: list[Call] = []
                logs.append(log)
                self.tasks.append(asyncio.create_task(self._run(read_only, log)))

    async def _run(self, read_only: bool, log: list[Call]) -> None:
        for n in range(100_000):  # bounded; stop ends it long before
            if self.stop.is_set():
                return
            call = Call(time.monotonic())
            try:
                async with self.pool.connect(read_only=read_only) as conn:
                    if not read_only:
                        await self.client.execute(conn, "INSERT INTO events VALUES ($1)", n)
                    call.port, call.in_recovery = await self.client.where(conn)
                    await self.client.commit(conn)
            except Exception as exc:
                call.error = exc
            log.append(call)
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 15)

    @staticmethod
    def on(log: list[Call], port: int, since: float) -> int:
        return sum(1 for c in log if c.port == port and c.began >= since)


class Ticker:
    """A task that sleeps 1 ms at a time and keeps the longest gap it saw: anything that
    blocks the event loop shows as a gap."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last = time.monotonic()
        for _ in range(1_000_000):  # bounded; cancelled long before
            await asyncio.sleep(0.001)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            last = now


async def prepared(cluster: Any, pool: aio.BoundedPool, client: Client) -> None:
    await pool.factory.ready(1, 2, timeout=10)  # type: ignore[attr-defined]
    async with pool.connect() as conn:
        await client.execute(conn, "CREATE TABLE events (n int)")
        await client.commit(conn)
    await asyncio.to_thread(cluster.wait_replicated)


def test_sixteen_writer_and_sixteen_reader_tasks_follow_a_failover(
    cluster: Any, run: Any, client: Client, until: Any
) -> None:
    async def main() -> tuple[float, float]:
        factory = client.factory(cluster.multi_host_dsn())
        async with aio.BoundedPool(factory, size=16, burst_limit=32) as pool:
            await prepared(cluster, pool, client)
            load = Load(pool, client)
            load.start(writers=16, readers=16)
            try:
                await until(lambda: all(len(log) >= 3 for log in load.writes + load.reads), "load")
                ticker = Ticker()
                killed_at = time.monotonic()
                new = await asyncio.to_thread(cluster.failover)
                await until(
                    lambda: all(load.on(log, new.port, killed_at) >= 5 for log in load.writes),
                    "every writer writing to the new primary",
                )
                ticker.task.cancel()
            finally:
                await load.close()
        first = min(c.began for log in load.writes for c in log if c.port == new.port)
        for log in load.writes:
            failed = [c.error for c in log if c.error is not None]
            assert len(failed) <= 1, failed
            assert all(c.in_recovery is False for c in log if c.error is None)
            resumed = next(i for i, c in enumerate(log) if c.port == new.port)
            assert all(c.port == new.port for c in log[resumed:])
        for log in load.reads:
            assert [c.error for c in log if c.error is not None] == []
        return first - killed_at, ticker.longest

    to_first_write, longest_gap = run(main)
    # Not a speed target (bench/ has those): the wait for the new primary blocked nothing.
    assert longest_gap < 0.5, longest_gap
    assert to_first_write < 10.0


def test_writes_move_after_a_demotion_with_one_read_only_error_at_most(
    cluster: Any, run: Any, client: Client, promote_another: Any, until: Any
) -> None:
    async def main() -> None:
        factory = client.factory(cluster.multi_host_dsn())
        async with aio.BoundedPool(factory, size=8) as pool:
            await prepared(cluster, pool, client)
            load = Load(pool, client)
            load.start(writers=4, readers=0)
            old = cluster.primary
            try:
                await until(lambda: all(len(log) >= 3 for log in load.writes), "load")
                await asyncio.to_thread(old.set_read_only, True)
                new = await asyncio.to_thread(promote_another, cluster)
                promoted_at = time.monotonic()
                await until(
                    lambda: all(load.on(log, new.port, promoted_at) >= 5 for log in load.writes),
                    "every writer writing to the promoted host",
                )
            finally:
                await load.close()
        for log in load.writes:
            errors = [c.error for c in log if c.error is not None]
            read_only = [e for e in errors if getattr(e, "sqlstate", None) == "25006"]
            assert len(read_only) <= 1 and errors == read_only, errors
        assert {h.address.port: h.role for h in factory.hosts()}[old.port] is Role.REPLICA

    run(main)


def test_a_storm_of_cancellations_leaves_no_query_running_and_no_transaction_open(
    shared_cluster: Any, run: Any, client: Client, until: Any
) -> None:
    marker = f"qdbpool-aio-storm-{random.getrandbits(32)}"
    sleep_sql = f"SELECT pg_sleep(30) /* {marker} */"  # never ends on its own in the test

    async def main() -> None:
        factory = client.factory(shared_cluster.multi_host_dsn(), **client.named(marker))
        pool = aio.BoundedPool(factory, size=8, burst_limit=16, timeout=20)
        rng = random.Random(1)
        loop = asyncio.get_running_loop()

        async def victim(n: int) -> None:
            async with pool.connect(read_only=n % 3 == 0) as conn:
                await client.begin(conn)  # a transaction open from here on
                await client.execute(conn, sleep_sql)

        def sessions() -> list[tuple[str, str | None]]:
            rows: list[tuple[str, str | None]] = []
            for node in shared_cluster.nodes:
                rows += node.sql(
                    "SELECT state, query FROM pg_stat_activity WHERE application_name = %s",
                    [marker],
                )
            return rows

        try:
            for _ in range(10):  # 10 waves of 100 tasks, each cancelled at a random point:
                tasks = [asyncio.create_task(victim(n)) for n in range(100)]
                for task in tasks:  # waiting in line, connecting, or mid-query
                    loop.call_later(rng.uniform(0.0, 0.05), task.cancel)
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results), results
            stats = pool.stats()
            assert (stats.in_use, stats.waiting) == (0, 0)
            # Cancelled connections are closed by the pool's own tasks, their statements
            # cancelled on the server: a session left running pg_sleep(30) would stay.
            try:
                await until(lambda: len(sessions()) == pool.stats().open, "settling", 10.0)
            except AssertionError:
                raise AssertionError(f"{pool.stats()}; sessions: {sessions()}") from None
            assert all(state == "idle" for state, _ in sessions()), sessions()
            async with pool.connect() as conn:  # the pool still works
                await client.execute(conn, "SELECT 1")
        finally:
            await pool.close()
        await until(lambda: sessions() == [], "every session closed")

    run(main)


def _process_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def _wait_for_process(pid: int, ready: Callable[[dict[str, str]], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not ready(_process_status(pid)):
        if time.monotonic() > deadline:
            raise AssertionError(f"server process {pid}: {what} not seen within 10s")
        time.sleep(0.001)


def _sigint_pending(status: dict[str, str]) -> bool:
    mask = int(status["ShdPnd"], 16) | int(status["SigPnd"], 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


@pytest.mark.parametrize("interrupt", ["cancel", "timeout"])
def test_a_cancel_the_server_ignores_is_sent_again_until_the_statement_stops(
    shared_cluster: Any, run: Any, client: Client, interrupt: str, until: Any
) -> None:
    """PostgreSQL ignores a cancel request that reaches a session still reading its next
    statement; the statement then runs to its end although its task was cancelled long
    before. Under load that happens by chance; here every time: the session's process is
    stopped (SIGSTOP) while the statement and the driver's cancel request are sent, and
    goes on only once the cancel is pending. The cancel must be sent again until the
    statement stops, well before its 30 s: whether the task was cancelled, or the
    statement timed out inside the checkout (a TimeoutError is an interruption too)."""
    marker = f"qdbpool-aio-lost-cancel-{random.getrandbits(32)}"
    sleep_sql = f"SELECT pg_sleep(30) /* {marker} */"

    def running() -> list[Any]:
        return shared_cluster.primary.sql(  # type: ignore[no-any-return]
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
            [marker],
        )

    async def main() -> None:
        factory = client.factory(shared_cluster.multi_host_dsn(), **client.named(marker))
        pool = aio.BoundedPool(factory, size=1, burst_limit=1, timeout=20)
        stopped: list[int] = []
        sent = asyncio.Event()

        async def victim() -> None:
            async with pool.connect() as conn:
                pid = client.backend_pid(conn)
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
                _wait_for_process(pid, lambda s: s["State"].startswith("T"), "stopped")
                sent.set()  # the statement is sent in this same step, before any await
                if interrupt == "timeout":
                    await asyncio.wait_for(client.execute(conn, sleep_sql), 0.2)
                else:
                    await client.execute(conn, sleep_sql)

        try:
            task = asyncio.create_task(victim())
            await asyncio.wait_for(sent.wait(), 10)
            await asyncio.sleep(0)  # the victim's step ends where it awaits the result
            if interrupt == "cancel":
                task.cancel()
            pid = stopped[0]
            try:
                await asyncio.to_thread(_wait_for_process, pid, _sigint_pending, "SIGINT")
            finally:
                os.kill(pid, signal.SIGCONT)
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            expected = asyncio.CancelledError if interrupt == "cancel" else asyncio.TimeoutError
            assert isinstance(outcome, expected), repr(outcome)
            await until(lambda: running() == [], "the cancelled statement stopped", 10.0)
            async with pool.connect() as conn:  # the pool still works
                await client.execute(conn, "SELECT 1")
        finally:
            for pid in stopped:  # never leave a server process stopped
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            await pool.close()

    run(main)


def test_close_stops_the_monitor_thread(shared_cluster: Any, run: Any, client: Client) -> None:
    async def main() -> None:
        before = set(threading.enumerate())  # not idents: an ended thread's is reused
        factory = client.factory(shared_cluster.multi_host_dsn())
        pool = aio.BoundedPool(factory)
        async with pool.connect() as conn:
            await client.execute(conn, "SELECT 1")
        started = [t for t in threading.enumerate() if t not in before]
        assert any(t.name.startswith("qdbpool-monitor") for t in started), [
            (t.name, t.ident) for t in threading.enumerate()
        ]
        await pool.close()
        for thread in started:
            thread.join(5)
        assert not [t.name for t in started if t.is_alive()]

    run(main)


def test_bad_options_fail_at_construction(shared_cluster: Any) -> None:
    with pytest.raises(aio.ConfigurationError, match="driver"):
        Postgres(shared_cluster.multi_host_dsn(), driver="psycopg2")
    with pytest.raises(aio.ConfigurationError, match="acquire_timeout"):
        Postgres(shared_cluster.multi_host_dsn(), acquire_timeout=-1)
    with pytest.raises(aio.ConfigurationError, match="target_session_attrs"):
        AsyncPG(shared_cluster.multi_host_dsn(), target_session_attrs="read-write")
    for factory in (
        Postgres(shared_cluster.multi_host_dsn()),
        AsyncPG(shared_cluster.multi_host_dsn()),
    ):
        assert shared_cluster.password not in repr(factory)


def test_a_wrong_password_fails_at_once_without_the_password(
    shared_cluster: Any, run: Any, client: Client
) -> None:
    async def main() -> None:
        dsn = shared_cluster.multi_host_dsn(password="not-the-password")
        async with aio.BoundedPool(client.factory(dsn, acquire_timeout=30), timeout=30) as pool:
            began = time.monotonic()
            with pytest.raises(aio.QdbPoolError, match="refused the connection settings") as e:
                async with pool.connect():
                    pass
            assert time.monotonic() - began < 10  # not after acquire_timeout
            assert "not-the-password" not in str(e.value)

    run(main)


@pytest.mark.parametrize("password", ["right", "wrong"])
def test_credentials_given_as_keywords_reach_the_monitor_too(
    shared_cluster: Any, run: Any, client: Client, password: str
) -> None:
    # AsyncPG gave its keywords to asyncpg alone: the monitor's probes had no password,
    # every host looked down ("no password supplied"), and no checkout ever succeeded.
    given = shared_cluster.password if password == "right" else "not-the-password"
    dsn = shared_cluster.multi_host_dsn(password="")
    assert shared_cluster.password not in dsn

    async def main() -> None:
        factory = client.factory(dsn, password=given, acquire_timeout=10)
        async with aio.BoundedPool(factory, timeout=30) as pool:
            if password == "right":
                async with pool.connect() as conn:
                    await client.execute(conn, "SELECT 1")
                return
            with pytest.raises(aio.QdbPoolError, match="refused the connection settings") as e:
                async with pool.connect():
                    pass
            assert given not in str(e.value)

    run(main)


def test_a_stalled_replica_blocks_no_read_for_long(
    cluster: Any, run: Any, client: Client, url_for: Any, until: Any
) -> None:
    """A replica that stops answering (the fault proxy holds every byte) while tasks read
    from it: once the monitor marks it down, their reads fail at once (its sockets are shut
    down) and the next ones go to the other replica; no task hangs."""
    primary, direct, behind = cluster.primary, *cluster.standbys

    async def main() -> None:
        with FaultProxy(behind.host, behind.port) as proxy:
            dsn = url_for(
                cluster,
                [
                    (primary.host, primary.port),
                    (direct.host, direct.port),
                    (proxy.host, proxy.port),
                ],
            )
            factory = client.factory(dsn, refresh_timeout=1.0)
            async with aio.BoundedPool(factory, size=8) as pool:
                await factory.ready(1, 2, timeout=10)
                stop = asyncio.Event()
                logs: list[list[Call]] = [[] for _ in range(4)]

                async def reader(log: list[Call]) -> None:
                    for _ in range(10_000):  # bounded; stop ends it long before
                        if stop.is_set():
                            return
                        call = Call(time.monotonic())
                        try:
                            async with pool.connect(read_only=True) as conn:
                                await client.execute(conn, "SELECT pg_sleep(0.02)")
                                call.port, call.in_recovery = await client.where(conn)
                        except Exception as exc:
                            call.error = exc
                        call.ended = time.monotonic()
                        log.append(call)
                        await asyncio.sleep(0.005)

                tasks = [asyncio.create_task(reader(log)) for log in logs]
                try:
                    await until(
                        # inet_server_port() behind the proxy: the standby's own port
                        lambda: {c.port for log in logs for c in log} >= {behind.port, direct.port},
                        "reads on both replicas",
                    )
                    stalled_at = time.monotonic()
                    proxy.stall()
                    await until(
                        lambda: all(
                            sum(
                                1
                                for c in log
                                if c.began > stalled_at + 1.5 and c.port == direct.port
                            )
                            >= 5
                            for log in logs
                        ),
                        "every reader reading from the other replica",
                    )
                finally:
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(*tasks), 10)
                    proxy.pass_through()
        for log in logs:
            # No call took much longer than the check timeout that found the host down.
            longest = max(c.ended - c.began for c in log)
            assert longest < 4.0, longest

    run(main)
