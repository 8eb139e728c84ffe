"""`SELECT 1` throughput against a local MariaDB: qdbpool's pools against PyMySQL peers.

Variants, each with 1, 4 and 16 threads, all on one server started here:
  raw PyMySQL / thread    a connection per thread, used directly (the floor)
  qdbpool SingletonPool   SingletonPool(MySQL(...)) through @with_conn
  qdbpool BoundedPool(4)  BoundedPool(MySQL(...), size=4) through @with_conn
  qdbpool BoundedPool(4/16)  the same with max_size=16, pymysql-pool's own limits
  pymysql-pool (4/16)     pymysqlpool.ConnectionPool(size=4, maxsize=16):
                          get_connection() ... conn.close()
Every connection is autocommit (pymysql-pool's default, set for the others too) and
ssl_disabled (PyMySQL otherwise builds a fresh TLS context per connect: ~20 ms of CPU that
would only slow down the untimed set-up). Each variant keeps its own threads for the whole
comparison (bench/_harness.Gang), so the intervals are over rounds alone: unlike
bench/pg_throughput.py's they leave out how fast a set of threads and connections happens
to be as a whole. The method: docs/benchmarks.md.
Targets: SingletonPool >= 0.97x the floor; BoundedPool(4) >= pymysql-pool at every
thread count. Run: python -m bench.mysql_throughput [--quick]
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

import qdbpool
from bench._harness import Gang, Variant, argument_parser, pin_to_one_cpu, verdict
from qdbpool import _global
from qdbpool.factories.mysql import MySQL
from qdbpool.testing._process import ServerUnavailable
from qdbpool.testing.mariadb import MariaDBServer

USER, PASSWORD, DATABASE = "bench", "bench-pw", "benchdb"
THREADS = (1, 4, 16)


def select_one(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()


# ------------------------------------------------------------------ the floor


class _Lease:
    """A thread's raw connection; given back to the free list when the thread ends."""

    def __init__(self, conn: Any, free: list[Any]) -> None:
        self.conn = conn
        self._free = free

    def __del__(self) -> None:
        self._free.append(self.conn)  # list.append is atomic


class RawPerThread:
    """What a program without a pool does: one PyMySQL connection per thread, kept."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._free: list[Any] = []
        self._all: list[Any] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def make_call(self) -> Callable[[], object]:
        lease: _Lease | None = getattr(self._local, "lease", None)
        if lease is None:
            try:
                conn = self._free.pop()
            except IndexError:
                conn = self._connect()
                with self._lock:
                    self._all.append(conn)
            lease = self._local.lease = _Lease(conn, self._free)
        conn = lease.conn
        return lambda: select_one(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()


# ------------------------------------------------------------------ running


@dataclass
class Contender:
    variant: Variant
    before: Callable[[], None]  # untimed, before each slice (e.g. choose the global pool)


def compare_with_setup(
    contenders: Sequence[Contender], *, threads: int, rounds: int, calls: int, seed: int = 1
) -> None:
    """Every round, each contender's `before()` (untimed) and then one slice, in a fresh
    shuffled order. Each contender keeps its threads (and so its connections) for the
    whole comparison: fresh threads per slice would open and close a connection per
    thread per slice, and the server's teardown of the last slice's connections would
    land in whichever slice runs next (at 16 threads that once made SingletonPool's
    median per-round ratio 0.958 while its median time per call beat the floor's).
    Slice times go to each contender's `variant.samples`."""
    rng = random.Random(seed)
    gangs: list[tuple[Contender, Gang]] = []
    try:
        for c in contenders:
            c.before()  # the gang's threads make their first (warm-up) call right away
            gangs.append((c, Gang(c.variant, threads)))
        for c, gang in gangs:  # an untimed slice each: pools grown, caches warm
            c.before()
            gang.run(max(1, calls // 4))
        order = list(gangs)
        for _ in range(rounds):
            rng.shuffle(order)
            for c, gang in order:
                c.before()
                c.variant.samples.append(gang.run(calls))
    finally:
        for _, gang in gangs:
            gang.stop()


def qps_ratios(v: Variant, base: Variant) -> list[float]:
    """Per round: v's throughput / base's throughput in the same round."""
    return [b / a for a, b in zip(v.samples, base.samples, strict=True)]


def qps_ratio(v: Variant, base: Variant) -> float:
    """Median over rounds of v's throughput / base's throughput in the same round."""
    return statistics.median(qps_ratios(v, base))


def render(title: str, variants: Sequence[Variant], base: Variant) -> str:
    width = max(len(v.name) for v in variants)
    head = f"  {'variant':<{width}}  {'ns/call':>9}  {'queries/s':>9}  {'qps x ' + base.name:>28}"
    lines = [title, head]
    for v in variants:
        ns = statistics.median(v.samples)
        lines.append(
            f"  {v.name:<{width}}  {ns:>9.0f}  {1e9 / ns:>9.0f}  {qps_ratio(v, base):>28.3f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 30 s)")
    args = parser.parse_args()
    # Calls per thread per slice. Full runs give every thread well over Python's 5 ms switch
    # interval of work per slice, so that threads really contend; --quick is a smoke run.
    if args.quick:
        rounds, per_thread = 5, {1: 300, 4: 80, 16: 30}
    else:
        rounds, per_thread = 25, {1: 1000, 4: 250, 16: 100}
    started = time.monotonic()
    pinned = pin_to_one_cpu()  # before the server starts: it inherits the mask
    cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    logging.getLogger("pymysqlpool").setLevel(logging.ERROR)
    try:
        server = MariaDBServer()
    except ServerUnavailable as exc:
        print(f"bench.mysql_throughput: skipped, no MariaDB server binaries ({exc})")
        return 0
    with server:
        if cpu is not None:
            server.pin_to_cpus({cpu})
        server.create_user(USER, PASSWORD, DATABASE)
        print(
            f"bench.mysql_throughput: benchmark {pinned}, MariaDB server (pid {server.pid}) "
            f"pinned to the same CPU; {rounds} rounds, shuffled, threads kept; medians of "
            f"per-round ratios; SELECT 1, autocommit, ssl_disabled"
        )
        run(server, rounds, per_thread, args.quick)
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


def run(server: MariaDBServer, rounds: int, per_thread: dict[int, int], quick: bool) -> None:
    import pymysqlpool

    connect_kwargs: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "user": USER,
        "password": PASSWORD,
        "database": DATABASE,
        "autocommit": True,
        "ssl_disabled": True,
    }
    dsn = server.dsn(USER, PASSWORD, DATABASE) + "?autocommit=true&ssl_disabled=true"
    singleton = qdbpool.SingletonPool(MySQL(dsn))
    bounded = qdbpool.BoundedPool(MySQL(dsn), size=4)
    bounded16 = qdbpool.BoundedPool(MySQL(dsn), size=4, max_size=16)
    peer = pymysqlpool.ConnectionPool(size=4, maxsize=16, **connect_kwargs)
    raw = RawPerThread(lambda: pymysql.connect(**connect_kwargs))

    decorated = qdbpool.with_conn(select_one)

    def peer_call() -> None:
        conn = peer.get_connection()
        try:
            select_one(conn)
        finally:
            conn.close()  # pymysql-pool: back to the pool

    def use(pool: qdbpool.Pool) -> Callable[[], None]:
        # @with_conn serves the global pool. initialize() would close the previous one, so
        # the global is switched directly, outside the timed slice.
        def before() -> None:
            _global.current = pool

        return before

    def nothing() -> None:
        pass

    verdicts = []
    try:
        for threads in THREADS:
            contenders = [
                Contender(Variant("raw PyMySQL / thread", raw.make_call), nothing),
                Contender(Variant("qdbpool SingletonPool", lambda: decorated), use(singleton)),
                Contender(Variant("qdbpool BoundedPool(4)", lambda: decorated), use(bounded)),
                Contender(Variant("qdbpool BoundedPool(4/16)", lambda: decorated), use(bounded16)),
                Contender(Variant("pymysql-pool (4/16)", lambda: peer_call), nothing),
            ]
            compare_with_setup(
                contenders, threads=threads, rounds=rounds, calls=per_thread[threads]
            )
            vs = [c.variant for c in contenders]
            floor, single, bnd, _, pp = vs
            print(render(f"\n{threads} thread(s), {per_thread[threads]} calls each:", vs, floor))
            print(
                f"  (open connections now: BoundedPool(4) {bounded.stats().open}, "
                f"BoundedPool(4/16) {bounded16.stats().open}, pymysql-pool {peer.total_num})"
            )
            to_floor = verdict([qps_ratios(single, floor)], at_least=0.97, quick=quick)
            to_peer = verdict([qps_ratios(bnd, pp)], at_least=1.0, quick=quick)
            verdicts.append(
                f"{threads:>2} thread(s): SingletonPool / the floor = {to_floor}\n"
                f"    BoundedPool(4) / pymysql-pool = {to_peer}"
            )
    finally:
        _global.current = None
        for pool in (singleton, bounded, bounded16):
            pool.close(timeout=0)
        raw.close()
        while peer._pool:  # pymysql-pool has no close(): detach, then really close
            pymysql.connections.Connection.close(peer._pool.pop())
    print(
        "\nqueries/s ratios, medians of per-round ratios, with bootstrap 95% intervals over"
        " the rounds (one set of threads per variant):\n" + "\n".join(verdicts)
    )


if __name__ == "__main__":
    raise SystemExit(main())
