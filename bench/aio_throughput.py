"""asyncio `SELECT 1` throughput against one local PostgreSQL primary, 1/16/64 tasks, vs peers.

Every task checks out a connection, runs `SELECT 1` (autocommit: one round trip), fetches
the row and gives the connection back, in a loop. Variants, each with as many connections
as tasks (so that nobody waits for a connection and the pool's own cost shows):
psycopg_pool's AsyncConnectionPool (`async with pool.connection()`), the psycopg reference;
qdbpool.aio's BoundedPool over qdbpool.aio.factories.Postgres (`@with_conn`); hasql's
psycopg3 PoolManager (`acquire_master()`, over AsyncConnectionPools of its own); and over
asyncpg, asyncpg's own Pool (`async with pool.acquire()`, the asyncpg reference) and
qdbpool.aio's BoundedPool over qdbpool.aio.factories.AsyncPG. psycopg connections run in
autocommit, as asyncpg's always do.

The run is made of rounds; in each, every variant runs one slice of `--seconds` (in a
shuffled order), on pools made once per concurrency and kept warm. The ratio of a variant
is taken per round against the reference's slice of the same round (the machine's noise
drifts over a few slices); printed are the median queries per second and the median ratio
with its bootstrap interval (the method: docs/benchmarks.md). Client and server share one
CPU, as in the other benchmarks.
Run: python -m bench.aio_throughput [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench._harness import argument_parser, median_ci, pin_to_one_cpu
from qdbpool.testing.postgres import PostgresCluster

QUERY = "SELECT 1"
TASK_COUNTS = (1, 16, 64)
REFERENCE = "psycopg_pool"
QDBPOOL = "qdbpool.aio"
HASQL = "hasql"
ASYNCPG_REFERENCE = "asyncpg Pool"
QDBPOOL_ASYNCPG = "qdbpool.aio+asyncpg"
TARGET_VS_REFERENCE = 0.97  # qdbpool.aio's qps / the same driver's own pool's
TARGET_VS_HASQL = 1.5  # qdbpool.aio's qps / hasql's


@dataclass
class Variant:
    name: str
    call: Callable[[], Awaitable[object]]  # one checkout + query + release
    close: Callable[[], Awaitable[object]]
    qps: list[float] = field(default_factory=list)  # one per round


async def make_variants(dsn: str, tasks: int) -> list[Variant]:
    import asyncpg
    import psycopg_pool
    from hasql.psycopg3 import PoolManager

    import qdbpool.aio as aio
    from qdbpool.aio.factories import AsyncPG, Postgres

    reference = psycopg_pool.AsyncConnectionPool(
        dsn, min_size=tasks, max_size=tasks, kwargs={"autocommit": True}, open=False
    )
    await reference.open(wait=True)

    async def reference_call() -> object:
        async with reference.connection() as conn:
            cursor = await conn.execute(QUERY)
            return await cursor.fetchone()

    pool = aio.BoundedPool(Postgres(dsn, autocommit=True), size=tasks, pre_create=tasks)
    await pool.open()

    @aio.with_conn(pool=pool)
    async def qdbpool_call(conn: Any) -> object:
        cursor = await conn.execute(QUERY)
        return await cursor.fetchone()

    manager = PoolManager(
        dsn,
        pool_factory_kwargs={"min_size": tasks, "max_size": tasks, "kwargs": {"autocommit": True}},
    )
    await manager.ready(masters_count=1, replicas_count=0, timeout=30)

    async def hasql_call() -> object:
        async with manager.acquire_master() as conn:
            cursor = await conn.execute(QUERY)
            return await cursor.fetchone()

    apg_reference = await asyncpg.create_pool(dsn, min_size=tasks, max_size=tasks)

    async def apg_reference_call() -> object:
        async with apg_reference.acquire() as conn:
            return await conn.fetchrow(QUERY)

    apg_pool = aio.BoundedPool(AsyncPG(dsn), size=tasks, pre_create=tasks)
    await apg_pool.open()

    @aio.with_conn(pool=apg_pool)
    async def qdbpool_apg_call(conn: Any) -> object:
        return await conn.fetchrow(QUERY)

    return [
        Variant(REFERENCE, reference_call, reference.close),
        Variant(QDBPOOL, qdbpool_call, pool.close),
        Variant(HASQL, hasql_call, manager.close),
        Variant(ASYNCPG_REFERENCE, apg_reference_call, apg_reference.close),
        Variant(QDBPOOL_ASYNCPG, qdbpool_apg_call, apg_pool.close),
    ]


async def run_slice(variant: Variant, tasks: int, seconds: float) -> float:
    """Queries per second over `tasks` tasks for about `seconds`."""
    done = 0
    stop_at = 0.0
    ready = asyncio.Event()

    async def worker() -> None:
        nonlocal done
        await variant.call()  # warm: outside the clock
        await ready.wait()
        for _ in range(10_000_000):  # bounded; the clock ends it long before
            if time.monotonic() >= stop_at:
                return
            await variant.call()
            done += 1

    workers = [asyncio.create_task(worker()) for _ in range(tasks)]
    await asyncio.sleep(0.05)  # every worker has warmed up and waits
    started = time.monotonic()
    stop_at = started + seconds
    ready.set()
    await asyncio.wait_for(asyncio.gather(*workers), seconds + 30)
    return done / (time.monotonic() - started)


def ratios(a: Variant, b: Variant) -> list[float]:
    return [x / y for x, y in zip(a.qps, b.qps, strict=True)]


def line(name: str, values: list[float]) -> str:
    low, high = median_ci([values])
    return f"{statistics.median(values):.3f} [{low:.3f}, {high:.3f}]"


async def measure(dsn: str, tasks: int, rounds: int, seconds: float, rng: random.Random) -> str:
    variants = await make_variants(dsn, tasks)
    try:
        for _ in range(rounds):
            order = list(variants)
            rng.shuffle(order)
            for variant in order:
                variant.qps.append(await run_slice(variant, tasks, seconds))
    finally:
        for variant in variants:
            await variant.close()
    by_name = {v.name: v for v in variants}
    mine = by_name[QDBPOOL]
    vs_reference = ratios(mine, by_name[REFERENCE])
    vs_hasql = ratios(mine, by_name[HASQL])
    vs_asyncpg = ratios(by_name[QDBPOOL_ASYNCPG], by_name[ASYNCPG_REFERENCE])
    qps = "  ".join(f"{v.name} {statistics.median(v.qps):,.0f}" for v in variants)

    def judged(values: list[float], target: float) -> str:
        met = statistics.median(values) >= target
        return f"{line(QDBPOOL, values)} (>= {target}: {'met' if met else 'MISSED'})"

    return (
        f"{tasks:>3} tasks  qps (median): {qps}\n"
        f"           qdbpool.aio / psycopg_pool {judged(vs_reference, TARGET_VS_REFERENCE)};"
        f" qdbpool.aio / hasql {judged(vs_hasql, TARGET_VS_HASQL)}\n"
        f"           qdbpool.aio+asyncpg / asyncpg Pool"
        f" {judged(vs_asyncpg, TARGET_VS_REFERENCE)}"
    )


async def main_async(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    # Five pools of up to 65 connections each are open at once.
    settings = {"max_connections": 400}
    with PostgresCluster(
        standbys=0, user="bench", password="bench-secret", settings=settings
    ) as cluster:
        dsn = cluster.multi_host_dsn()
        cpus = os.sched_getaffinity(0)
        for pid in (cluster.primary.pid, *cluster.primary.backend_pids()):
            if pid is not None:
                os.sched_setaffinity(pid, cpus)
        for tasks in TASK_COUNTS:
            print(await measure(dsn, tasks, args.rounds, args.seconds, rng), flush=True)


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=11, help="rounds (default 11)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per slice")
    parser.add_argument("--quick", action="store_true", help="3 short rounds (a smoke run)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 3, 0.2
    logging.getLogger("hasql").setLevel(logging.CRITICAL)
    print(__doc__.splitlines()[0] if __doc__ else "")
    print(
        f"  client {pin_to_one_cpu()}, the server pinned to the same CPU; "
        f"{args.rounds} rounds of {args.seconds:g} s slices per variant"
    )
    began = time.monotonic()
    asyncio.run(main_async(args))
    print(f"  ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
