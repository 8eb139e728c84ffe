"""A cancellation storm over a real aiosqlite pool: 1,000 tasks, many cancelled at random
points (waiting in line, connecting, mid-statement, mid-release). Afterwards the stats
agree, nothing is in use or waiting, every connection is out of a transaction, and the
pool still serves."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from qdbpool.aio import BoundedPool, with_conn
from qdbpool.aio.factories import SQLite

pytest.importorskip("aiosqlite")

Run = Callable[..., Any]

TASKS = 1000
BURST = 16


class RecordingSQLite(SQLite):
    """SQLite remembering each connection it opened: the test closes any the pool did not
    (a leaked aiosqlite connection's thread would keep the test process from exiting)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.opened: list[Any] = []

    async def connect(self, *, read_only: bool = False) -> Any:
        conn = await super().connect(read_only=read_only)
        self.opened.append(conn)
        return conn

    async def close_leftovers(self) -> None:
        for conn in self.opened:
            await conn.close()  # a no-op for one already closed


async def _create_table(conn: Any) -> None:
    # Each connection has an in-memory database of its own: no lock between writers, so
    # the storm tests the pool, not SQLite's locking.
    await conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")


@pytest.mark.parametrize("seed", [1, 2])
def test_a_cancellation_storm_leaks_no_capacity_and_no_transaction(
    run: Run, until: Any, seed: int
) -> None:
    rng = random.Random(seed)
    # Where each task is cancelled: None (never), "line" (from outside, a few loop turns
    # after its start: in line, or opening a connection), 1-4 (inside the body, in the
    # middle of its statement number 1-4), "twice" (mid-statement, then again while its
    # connection is being reset).
    stages: list[object] = [
        rng.choice([None, None, "line", "line", 1, 2, 3, 4, "twice"]) for _ in range(TASKS)
    ]

    async def main() -> None:
        factory = RecordingSQLite()
        try:
            await storm(factory)
        finally:
            await factory.close_leftovers()

    async def storm(factory: RecordingSQLite) -> None:
        pool = BoundedPool(factory, size=8, burst_limit=BURST, timeout=20, configure=_create_table)
        tasks: list[asyncio.Task[int]] = []

        def checkpoint(n: int, step: int) -> None:
            """Before statement `step` of task n: cancel it there if that is its stage; the
            cancellation lands while the statement runs."""
            stage = stages[n]
            if stage == step or (stage == "twice" and step == 3):
                tasks[n].cancel()
            if stage == "twice" and step == 3:
                asyncio.get_running_loop().call_soon(tasks[n].cancel)

        @with_conn(pool=pool)
        async def work(conn: Any, n: int) -> int:
            checkpoint(n, 1)
            await conn.execute("BEGIN")
            checkpoint(n, 2)
            await conn.execute("INSERT INTO t VALUES (?)", (n,))
            for _ in range(n % 3):
                await asyncio.sleep(0)
            checkpoint(n, 3)
            async with conn.execute("SELECT count(*) FROM t") as cursor:
                await cursor.fetchall()
            checkpoint(n, 4)
            await conn.commit()
            return n

        tasks.extend(asyncio.create_task(work(n)) for n in range(TASKS))
        for n in rng.sample(range(TASKS), TASKS):
            if stages[n] == "line":
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
                tasks[n].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = {n for n, r in enumerate(results) if isinstance(r, asyncio.CancelledError)}
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == len(cancelled), failed[:3]  # no error but cancellation
        in_body = {n for n, stage in enumerate(stages) if stage not in (None, "line")}
        assert in_body <= cancelled  # every task cancelled in its body saw it
        assert all(results[n] == n for n, stage in enumerate(stages) if stage is None)

        await until(
            lambda: pool.stats().in_use == 0 and pool._reserved == pool.stats().open,
            what="every connection back and nothing in flux",
        )
        stats = pool.stats()
        assert (stats.in_use, stats.waiting, stats.timeouts) == (0, 0, 0)
        assert 0 < stats.open <= BURST
        assert stats.open == stats.created - stats.closed

        # Every connection, held at once: none in a transaction.
        everyone = asyncio.Event()
        seen: list[Any] = []

        async def look() -> None:
            async with pool.connect() as conn:
                seen.append(conn)
                if len(seen) == stats.open:
                    everyone.set()
                await everyone.wait()

        await asyncio.gather(*(look() for _ in range(stats.open)))
        assert len({id(c) for c in seen}) == stats.open
        assert not any(conn.in_transaction for conn in seen)
        assert pool.stats().created == stats.created  # all of them were the idle ones

        # And the pool still serves everyone.
        stages[:100] = [None] * 100
        assert await asyncio.gather(*(work(n) for n in range(100))) == list(range(100))
        await pool.close()
        final = pool.stats()
        assert (final.open, final.in_use) == (0, 0)
        assert final.closed == final.created

    run(main)
