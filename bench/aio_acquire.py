"""Cost of one acquire + release in asyncio, pool against pool, with connections that cost
nothing: qdbpool.aio against asyncio-connection-pool (the burstable, lock-free pool that
qdbpool.aio learns from).

Variants (pools of 4 connections, burst limit 8):
  qdbpool.aio connect()          async with pool.connect() as conn: <body>
  qdbpool.aio @with_conn         a decorated coroutine function: <body>
  asyncio-connection-pool        async with pool.get_connection() as conn: <body>
With 1 and 4 tasks the body is empty (nobody waits: the cost of the pool alone); with 16
it yields to the loop once (`await asyncio.sleep(0)`), so that 16 tasks hold connections
at once: the pools burst to 8, and the others wait in line.
Both get the same trivial connections (a plain object; opening and closing do nothing)
through their own extension point: a qdbpool.aio ConnectionFactory whose connections are
always clean, an asyncio-connection-pool ConnectionStrategy whose are never closed.
Each round runs every variant once, in a shuffled order, on the same event loop; a
variant's tasks each make `calls` acquire+release pairs. Printed: median ns per pair and
the median of the per-round ratios to asyncio-connection-pool (target: qdbpool.aio at
least its rate, a ratio of cost <= 1.0). Under contention the two do not promise the
same: qdbpool.aio serves waiters first in line and bounds each wait (`timeout`), so a
task that releases a connection and asks again queues behind them; asyncio-connection-pool
has no timeout, and the releasing task takes the connection back from its queue before
the waiter it woke runs. Run: python -m bench.aio_acquire [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import qdbpool.aio as aio
from bench._harness import argument_parser, pin_to_one_cpu
from qdbpool.aio.protocol import CLEAN, ConnectionFactory

SIZE, BURST = 4, 8
TASKS = (1, 4, 16)


class FreeConnection:
    """A connection that costs nothing."""


class FreeFactory(ConnectionFactory):
    """qdbpool.aio's side: connections opened and closed for nothing, always clean."""

    cancel_safe = True

    async def connect(self, *, read_only: bool = False) -> FreeConnection:
        return FreeConnection()

    def state_after_use(self, conn: Any) -> int:
        return CLEAN


def make_peer() -> Any:
    from asyncio_connection_pool import ConnectionPool, ConnectionStrategy

    class FreeStrategy(ConnectionStrategy[FreeConnection]):
        """asyncio-connection-pool's side: the same connections."""

        async def make_connection(self) -> FreeConnection:
            return FreeConnection()

        def connection_is_closed(self, conn: FreeConnection) -> bool:
            return False

        async def close_connection(self, conn: FreeConnection) -> None:
            pass

    return ConnectionPool(strategy=FreeStrategy(), max_size=SIZE, burst_limit=BURST)


@dataclass
class Variant:
    name: str
    one_call: Callable[[], Awaitable[None]]
    samples: list[float] = field(default_factory=list)  # ns per acquire+release, per round


async def nothing() -> None:
    pass


def make_variants(
    pool: aio.BoundedPool, peer: Any, body: Callable[[], Awaitable[None]]
) -> list[Variant]:
    async def qdbpool_connect() -> None:
        async with pool.connect():
            await body()

    @aio.with_conn(pool=pool)
    async def decorated(conn: Any) -> None:
        await body()

    async def peer_get() -> None:
        async with peer.get_connection():
            await body()

    return [
        Variant("qdbpool.aio connect()", qdbpool_connect),
        Variant("qdbpool.aio @with_conn", decorated),  # type: ignore[arg-type]
        Variant("asyncio-connection-pool", peer_get),
    ]


async def run_slice(variant: Variant, tasks: int, calls: int) -> float:
    """ns per acquire+release, `tasks` tasks making `calls` each, all started together."""
    one_call = variant.one_call

    async def worker() -> None:
        for _ in range(calls):
            await one_call()

    started = time.perf_counter_ns()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(tasks))), 120)
    return (time.perf_counter_ns() - started) / (tasks * calls)


def ratios(a: Variant, b: Variant) -> list[float]:
    return [x / y for x, y in zip(a.samples, b.samples, strict=True)]


async def measure(tasks: int, rounds: int, calls: int, rng: random.Random, judge: bool) -> str:
    async with aio.BoundedPool(FreeFactory(), size=SIZE, burst_limit=BURST, timeout=30) as pool:
        peer = make_peer()
        body = (lambda: asyncio.sleep(0)) if tasks > SIZE else nothing
        variants = make_variants(pool, peer, body)
        for variant in variants:  # warm: every connection opened, the code paths hot
            await run_slice(variant, tasks, max(calls // 10, 1))
        for _ in range(rounds):
            order = variants[:]
            rng.shuffle(order)
            for variant in order:
                variant.samples.append(await run_slice(variant, tasks, calls))
    peer_variant = variants[-1]
    width = max(len(v.name) for v in variants)
    lines = [
        f"{tasks} task(s), {calls} calls each:",
        f"  {'variant':<{width}}  {'ns per acquire+release':>22}  {'cost x peer':>12}",
    ]
    for v in variants:
        cost = statistics.median(ratios(v, peer_variant))
        lines.append(f"  {v.name:<{width}}  {statistics.median(v.samples):>22.0f}  {cost:>12.2f}")
    if judge:  # not on a smoke run: too few rounds to judge anything
        q = statistics.median(ratios(variants[0], peer_variant))
        verdict = "met" if q <= 1.0 else "MISSED"
        lines.append(f"  qdbpool.aio connect() at least asyncio-connection-pool's rate: {verdict}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    rounds, calls = (5, 2_000) if args.quick else (21, 20_000)
    rng = random.Random(args.seed)
    for tasks in TASKS:
        print(await measure(tasks, rounds, max(calls // tasks, 1), rng, not args.quick))
        print()


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffled orders")
    args = parser.parse_args()
    started = time.monotonic()
    pinned = pin_to_one_cpu()
    print(f"bench.aio_acquire: {pinned}; pools of {SIZE} (burst {BURST}), the default loop\n")
    asyncio.run(main_async(args))
    print(f"total {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
