"""`SELECT 1` throughput against one local PostgreSQL primary, 1/4/16 threads, vs peers.

Every thread runs `SELECT 1` in a loop (autocommit: one round trip per query) and fetches
the row. Variants: a raw psycopg connection per thread (the floor: no pool at all);
a hand-written threading.local decorator over such connections (the cost of a decorator
layer alone, no checks); qdbpool's SingletonPool with the Postgres factory, through
@with_conn; psycopg_pool's ConnectionPool (size = threads, `with pool.connection()`);
DBUtils PersistentDB (creator=psycopg). The run is made of blocks; in each, every
variant gets fresh worker threads (and so fresh connections, but for psycopg_pool's)
that it keeps for the block's rounds. Each variant's slice is followed by a slice of the
floor's: the machine's noise drifts over a few slices, so each ratio is taken against the
floor's slices just before and after. Printed: median queries per second over rounds, and
the median over rounds of each variant's qps / the floor's, with its interval (the
method: docs/benchmarks.md).
Run: python -m bench.pg_throughput [--quick] [--blocks N] [--rounds N]
"""

from __future__ import annotations

import functools
import gc
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import qdbpool
from bench._harness import (
    Gang,
    Variant,
    argument_parser,
    median_ci,
    pin_to_one_cpu,
    pooled,
    verdict,
)
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.postgres import Node, PostgresCluster

QUERY = "SELECT 1"
THREAD_COUNTS = (1, 4, 16)
TARGET = 0.97  # qdbpool's qps / the raw floor's qps
FLOOR = "raw psycopg (floor)"
QDBPOOL = "qdbpool @with_conn"
HAND_WRITTEN = "hand-written decorator"


# --------------------------------------------------------------------------------------------
# Pinning the server too
# --------------------------------------------------------------------------------------------


def pin_server(node: Node, cpus: set[int]) -> str:
    """Pin a node's postmaster and its current children (backends forked later inherit)."""
    pids = [pid for pid in (node.pid, *node.backend_pids()) if pid is not None]
    pinned = 0
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except (ProcessLookupError, PermissionError):
            continue  # a child that just exited, or not ours to pin
        pinned += os.sched_getaffinity(pid) == cpus
    return f"server {node.name} pid {node.pid}: {pinned}/{len(pids)} processes on CPU {cpus}"


# --------------------------------------------------------------------------------------------
# The variants
# --------------------------------------------------------------------------------------------


def _select_one(conn: Any) -> None:
    conn.execute(QUERY).fetchone()


_qdbpool_select = cast("Callable[[], None]", qdbpool.with_conn()(_select_one))


class HandWritten:
    """The ten-line threading.local decorator a team writes without a library: the cost
    of a decorator layer alone, with no checks (no reconnect, no role, no reset)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._local = threading.local()
        self.select = self.decorate(_select_one)

    def decorate(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        local, connect = self._local, self._connect

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = connect()
            return fn(conn, *args, **kwargs)

        return wrapper


class Variants:
    """The four ways to run the query, for one thread count; `close()` releases them all."""

    def __init__(self, dsn: str, threads: int) -> None:
        import psycopg
        from dbutils.persistent_db import PersistentDB
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self._raw: list[Any] = []
        self._raw_lock = threading.Lock()
        self.dsn = dsn
        self.pool = ConnectionPool(
            dsn,
            min_size=threads,
            max_size=threads,
            kwargs={"autocommit": True},
            open=True,
            name="bench",
        )
        self.pool.wait(timeout=30)
        self.persistent = PersistentDB(psycopg, conninfo=dsn, autocommit=True)
        self.hand_written = HandWritten(self._open_raw)

    def _open_raw(self) -> Any:
        conn = self._psycopg.connect(self.dsn, autocommit=True)
        with self._raw_lock:
            self._raw.append(conn)
        return conn

    def raw(self) -> Callable[[], object]:
        conn = self._open_raw()
        return lambda: conn.execute(QUERY).fetchone()

    def psycopg_pool(self) -> None:
        with self.pool.connection() as conn:
            conn.execute(QUERY).fetchone()

    def dbutils(self) -> None:
        cursor = self.persistent.connection().cursor()
        cursor.execute(QUERY)
        cursor.fetchone()
        cursor.close()

    def all(self) -> list[Variant]:
        return [
            Variant(FLOOR, self.raw),
            Variant(HAND_WRITTEN, lambda: self.hand_written.select),
            Variant(QDBPOOL, lambda: _qdbpool_select),
            Variant("psycopg_pool ConnectionPool", lambda: self.psycopg_pool),
            Variant("DBUtils PersistentDB", lambda: self.dbutils),
        ]

    def close_connections(self) -> None:
        """Close the raw connections opened so far (those of the floor and the hand-written
        decorator: their threads have ended)."""
        with self._raw_lock:
            for conn in self._raw:
                conn.close()
            self._raw.clear()

    def close(self) -> None:
        self.pool.close()
        self.close_connections()


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


Ratios = dict[str, list[list[float]]]  # per variant, per block: its ratio in each round


@dataclass
class Comparison:
    variants: list[Variant]
    ratios: Ratios  # against the mean of the floor slices just before and after
    # The same against only the floor slice before, or only the one after: a variant's
    # leftovers (garbage, server-side work) are paid in the slice after it, so if these two
    # differ much, that matters more than noise.
    before_only: dict[str, list[float]]
    after_only: dict[str, list[float]]


def compare_gangs(
    variants: Variants,
    threads: int,
    blocks: int,
    rounds: int,
    calls: int,
    rng: random.Random,
) -> Comparison:
    """`blocks` times: fresh threads for every variant (and fresh connections, but for
    psycopg_pool's, which lives as long as `variants`), then `rounds` rounds. The floor's
    gang runs a slice; then, each round, every other variant's gang runs one slice followed
    by another of the floor's, in a fresh shuffled order.

    Each variant's ratio in a round is its qps / the floor's over the two floor slices just
    around its own. The machine's noise drifts over a few slices (here: an autocorrelation
    of 0.73 between a slice and the next, 0.04 ten slices apart), so a ratio to the slices
    beside it cancels most of it: the ratio of two adjacent slices of the same variant
    spread +/-2% (quartiles), that of two slices anywhere in the run +/-10%. Blocks exist
    because a set of threads and connections can also be a few percent slower or faster as
    a whole for as long as it lives (in one run at 1 thread, with the same threads
    throughout, qdbpool's interval was 0.920-0.964x the floor and the hand-written
    decorator's 0.973-1.016x; other runs had them level, or the other way round): fresh
    ones per block put that into the median and its interval instead of into one run's
    verdict.
    """
    vs = variants.all()
    floor = vs[0]
    found = Comparison(
        vs, {v.name: [] for v in vs}, {v.name: [] for v in vs}, {v.name: [] for v in vs}
    )
    per_thread = max(1, calls // threads)
    for _ in range(blocks):
        gangs: list[Gang] = []
        block = {v.name: list[float]() for v in vs}
        try:
            for variant in vs:
                gangs.append(Gang(variant, threads))
            floor_gang, *other_gangs = gangs
            for gang in gangs:  # one untimed slice each: caches, plans, the server's backends
                gang.run(max(1, per_thread // 4))
            before = floor_gang.run(per_thread)
            floor.samples.append(before)
            for _ in range(rounds):
                rng.shuffle(other_gangs)
                block[floor.name].append(1.0)
                for gang in other_gangs:
                    name = gang.variant.name
                    ns = gang.run(per_thread)
                    after = floor_gang.run(per_thread)
                    floor.samples.append(after)
                    gang.variant.samples.append(ns)
                    block[name].append((before + after) / 2 / ns)
                    found.before_only[name].append(before / ns)
                    found.after_only[name].append(after / ns)
                    before = after
        finally:
            for gang in gangs:
                gang.stop()
            gc.collect()  # DBUtils closes a dead thread's connection only when it is freed
            variants.close_connections()
        for name, values in block.items():
            found.ratios[name].append(values)
    return found


def qps_table(title: str, variants: Sequence[Variant], ratios: Ratios) -> str:
    width = max(len(v.name) for v in variants)
    lines = [
        title,
        f"  {'variant':<{width}}  {'median qps':>10}  {'x floor':>7}  {'(95% CI)':>16}",
    ]
    for v in variants:
        low, high = median_ci(ratios[v.name])
        lines.append(
            f"  {v.name:<{width}}  {1e9 / statistics.median(v.samples):>10,.0f}"
            f"  {statistics.median(pooled(ratios[v.name])):>7.3f}"
            f"  {f'({low:.3f} .. {high:.3f})':>16}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 30 s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffled orders")
    parser.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="fresh threads and connections this many times per thread count (default 5)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per block (default 8)")
    args = parser.parse_args()
    # Many short slices rather than a few long ones: more rounds narrow the interval around
    # the median ratio (printed with it), and each ratio's floor slices lie closer to it. A
    # slice still gives each of 16 threads more work than Python's 5 ms switch interval.
    blocks, rounds, calls = (2, 3, 2_000) if args.quick else (5, 8, 3_000)
    for name in ("blocks", "rounds"):
        given = getattr(args, name)
        if given is not None and given < 1:
            parser.error(f"--{name} must be at least 1")
    blocks = args.blocks or blocks
    rounds = args.rounds or rounds
    began = time.monotonic()

    pinned = pin_to_one_cpu()  # before the server starts: it inherits the affinity
    cpus = os.sched_getaffinity(0)
    print("bench.pg_throughput: SELECT 1 (autocommit, row fetched) in a loop per thread,")
    print("  against one local PostgreSQL primary over loopback TCP.")
    print(f"  {blocks} blocks of {rounds} rounds, each block with fresh threads and connections;")
    print(
        f"  a round runs every variant once ({calls} queries per slice, split over the threads),"
        " in a shuffled order,"
    )
    print("  with a slice of the raw floor before and after each (the ratio's reference);")
    print("  medians over rounds of qps, and of per-round qps ratios vs the raw floor,")
    print("  with a bootstrap 95% interval for that median (resampling blocks, then rounds).")
    rng = random.Random(args.seed)
    verdicts: list[str] = []
    # Each block opens up to 5 x 16 fresh connections while the last block's backends may
    # still be exiting: more than the default 100 slots.
    with PostgresCluster(standbys=0, user="bench", settings={"max_connections": 400}) as cluster:
        print(f"  client {pinned}; {pin_server(cluster.primary, cpus)}")
        dsn = cluster.primary.dsn()
        qdbpool.initialize(Postgres(dsn, autocommit=True))
        try:
            for threads in THREAD_COUNTS:
                variants = Variants(dsn, threads)
                try:
                    found = compare_gangs(variants, threads, blocks, rounds, calls, rng)
                finally:
                    variants.close()
                ours, hand = found.ratios[QDBPOOL], found.ratios[HAND_WRITTEN]
                print()
                print(qps_table(f"{threads} thread(s):", found.variants, found.ratios))
                versus_hand = [
                    [a / b for a, b in zip(mine, theirs, strict=True)]
                    for mine, theirs in zip(ours, hand, strict=True)
                ]
                low, high = median_ci(versus_hand)
                verdicts.append(
                    f"{threads:>2} thread(s): qdbpool's qps / the raw floor's = "
                    f"{verdict(ours, at_least=TARGET, quick=args.quick)}\n"
                    f"    against the floor slice before it alone "
                    f"{statistics.median(found.before_only[QDBPOOL]):.3f}, after it alone "
                    f"{statistics.median(found.after_only[QDBPOOL]):.3f}\n"
                    f"    hand-written decorator = {statistics.median(pooled(hand)):.3f}x the"
                    f" floor; qdbpool = {statistics.median(pooled(versus_hand)):.3f}x"
                    f" hand-written (95% CI {low:.3f}..{high:.3f})"
                )
        finally:
            qdbpool.close()
    print("\n" + "\n".join(verdicts))
    print(f"\n(total run time {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
