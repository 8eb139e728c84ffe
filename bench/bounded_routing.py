"""A BoundedPool over a routing factory: mixed reads and writes against writes only.

Issue 11 §6: a release whose longest waiter wanted the other route used to retire the
connection, so mixed load opened a connection every other checkout and ran at half the
writes-only rate. Here 16 threads share a BoundedPool(size=4) over a 3-node PostgreSQL
cluster: one pool runs writes only (`SELECT 1` on the primary), another the same with every
other call read-only (a replica), and a third reads only, as a control: a replica's
`SELECT 1` need not cost what the primary's does. Printed: calls/s of each, their ratio
(median of per-round ratios, with its interval; target >= 0.9) and connections opened per
checkout (target <= 0.01). Method: docs/benchmarks.md.
Run: python -m bench.bounded_routing [--quick]
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Callable

import qdbpool
from bench._harness import Gang, Variant, argument_parser, pin_to_one_cpu, verdict
from qdbpool.factories import Postgres
from qdbpool.testing import PostgresCluster

THREADS = 16
SIZE = 4


def variant(name: str, pool: qdbpool.BoundedPool, read_share: int) -> Variant:
    """`read_share` calls of every two are read-only (0: writes only, 1: mixed)."""

    def make_call() -> Callable[[], object]:
        turns = itertools.cycle([True] * read_share + [False] * (2 - read_share))

        def call() -> object:
            with pool.connect(read_only=next(turns)) as conn:
                return conn.execute("SELECT 1").fetchone()

        return call

    return Variant(name, make_call)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds, calls = (4, 50) if args.quick else (15, 200)
    print(f"bench.bounded_routing: {pin_to_one_cpu()}; {THREADS} threads, BoundedPool(size={SIZE})")
    with PostgresCluster(standbys=2) as cluster:
        dsn = cluster.multi_host_dsn()
        pools = {
            "writes only": qdbpool.BoundedPool(Postgres(dsn), size=SIZE, timeout=60),
            "mixed": qdbpool.BoundedPool(Postgres(dsn), size=SIZE, timeout=60),
            "reads only": qdbpool.BoundedPool(Postgres(dsn), size=SIZE, timeout=60),
        }
        try:
            for pool in pools.values():
                pool.factory.ready(1, 2, timeout=30)  # type: ignore[attr-defined]
            gangs = {
                "writes only": Gang(variant("writes only", pools["writes only"], 0), THREADS),
                "mixed": Gang(variant("mixed", pools["mixed"], 1), THREADS),
                "reads only": Gang(variant("reads only", pools["reads only"], 2), THREADS),
            }
            before = {name: pool.stats() for name, pool in pools.items()}
            ns: dict[str, list[float]] = {name: [] for name in gangs}
            for number in range(rounds):
                order = list(gangs)
                random.Random(number).shuffle(order)
                for name in order:
                    ns[name].append(gangs[name].run(calls))
            for gang in gangs.values():
                gang.stop()
            ratios = [w / m for w, m in zip(ns["writes only"], ns["mixed"], strict=True)]
            for name, pool in pools.items():
                after = pool.stats()
                checkouts = after.checkouts - before[name].checkouts
                opened = after.created - before[name].created
                qps = 1e9 / statistics.median(ns[name])
                print(
                    f"  {name:<12} {qps:>9,.0f} calls/s   opened {opened} for {checkouts} "
                    f"checkouts ({opened / checkouts:.4f} per checkout; target <= 0.01)"
                )
            shown = verdict([ratios], at_least=0.9, quick=args.quick)
            print(f"  mixed / writes only (calls/s): {shown}")
            # The control: a replica's SELECT 1 need not cost what the primary's does.
            control = [w / r for w, r in zip(ns["writes only"], ns["reads only"], strict=True)]
            shown = verdict([control], quick=True)
            print(f"  reads only / writes only (calls/s), no target: {shown}")
        finally:
            for pool in pools.values():
                pool.close(timeout=0)


if __name__ == "__main__":
    main()
