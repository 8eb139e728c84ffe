"""What qdbpool costs per call on a warm thread, side by side with what users would use instead.

Three comparisons, all variants timed in the same run (the method: docs/benchmarks.md):
  (a) a body of `conn.execute("select 1").fetchone()` on in-memory SQLite, through qdbpool's
      @with_conn and through a hand-written ten-line threading.local decorator
      (target: qdbpool's time at most 1.3x the hand-written decorator's);
  (b) a trivial body (`return conn`) through qdbpool's @with_conn and through quasardb.pool's
      @with_conn (target: quasardb.pool's time at least 2.5x qdbpool's);
  (c) `with pool.connect() as conn: return conn` on a pool object (what `instance()`
      returns) for qdbpool's SingletonPool and BoundedPool and for quasardb.pool's
      SingletonPool (target: quasardb.pool's time at least 1.5x each of qdbpool's); and,
      for orientation, the same with one attribute read (`conn.total_changes`) in the body;
  (d) for orientation, what OpenTelemetry metrics cost: the body of (a) through
      `@with_conn(pool=p)` on a pool that `qdbpool.metrics.instrument` publishes to an SDK
      meter provider, and on one that is not instrumented.
Every pool gets in-memory SQLite connections: quasardb.pool through its `get_conn` callable.
`--instructions` counts instructions per call of (a) to (d) under valgrind's callgrind
instead of timing them.
Run: python -m bench.overhead [--quick] [--instructions]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdbpool
from bench._harness import (
    Variant,
    argument_parser,
    compare,
    interval,
    pin_to_one_cpu,
    table,
    verdict,
)
from qdbpool.factories import SQLite

THREAD_COUNTS = (1, 4)
BOUNDED_SIZE = 4  # >= the most threads: nobody waits for a connection


def select_one(conn: sqlite3.Connection) -> object:
    return conn.execute("select 1").fetchone()


def trivial(conn: Any) -> object:
    return conn


def new_sqlite() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", check_same_thread=False)


_local = threading.local()


def hand_written(fn: Callable[..., object]) -> Callable[..., object]:
    # What a team writes in ten lines when it has no library.
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> object:
        conn = getattr(_local, "conn", None)
        if conn is None:
            conn = _local.conn = new_sqlite()
        return fn(conn, *args, **kwargs)

    return wrapper


@dataclass
class Pair:
    """A ratio with its target: the numerator variant's time / the denominator's, per round."""

    label: str
    numerator: str
    denominator: str
    at_least: float | None = None
    at_most: float | None = None


PAIRS = [
    Pair("(a) select 1: qdbpool @with_conn / hand-written", "qdbpool @with_conn, select 1",
         "hand-written decorator, select 1", at_most=1.3),
    Pair("(b) trivial: quasardb.pool @with_conn / qdbpool", "quasardb.pool @with_conn, trivial",
         "qdbpool @with_conn, trivial", at_least=2.5),
    Pair("(c) connect(): quasardb.pool / qdbpool SingletonPool", "quasardb.pool connect()",
         "qdbpool SingletonPool connect()", at_least=1.5),
    Pair("(c) connect(): quasardb.pool / qdbpool BoundedPool", "quasardb.pool connect()",
         "qdbpool BoundedPool connect()", at_least=1.5),
    # The same with one attribute read in the body (no target: for orientation). Reads go
    # through quasardb.pool's __getattr__, in Python, and through qdbpool's wrapper.
    Pair("    the same, 1 read: quasardb.pool / SingletonPool", "quasardb.pool connect(), 1 read",
         "qdbpool SingletonPool connect(), 1 read"),
    Pair("    the same, 1 read: quasardb.pool / BoundedPool", "quasardb.pool connect(), 1 read",
         "qdbpool BoundedPool connect(), 1 read"),
    Pair("(d) select 1, metrics to an OTel SDK / none", "qdbpool @with_conn(pool=), metrics on",
         "qdbpool @with_conn(pool=), metrics off"),
]  # fmt: skip


def makers(
    cleanup: contextlib.ExitStack, *, with_quasardb: bool = True
) -> dict[str, Callable[[], Callable[[], object]]]:
    """Every variant by name: what each thread calls once to get the zero-argument call it
    makes. qdbpool's global pool must be set up. Without quasardb, its variants are left
    out (importing it imports NumPy, which takes long under valgrind)."""
    bounded = qdbpool.BoundedPool(SQLite(":memory:"), size=BOUNDED_SIZE)
    cleanup.callback(bounded.close)
    decorated_select = qdbpool.with_conn(select_one)
    handmade_select = hand_written(select_one)
    decorated_trivial = qdbpool.with_conn(trivial)
    # (d): two pools alike but for metrics, each through @with_conn(pool=...).
    plain = qdbpool.SingletonPool(SQLite(":memory:"))
    cleanup.callback(plain.close)
    metered = qdbpool.SingletonPool(SQLite(":memory:"))
    cleanup.callback(metered.close)
    instrument_with_sdk(metered, cleanup)
    select_plain = qdbpool.with_conn(pool=plain)(select_one)
    select_metered = qdbpool.with_conn(pool=metered)(select_one)

    def by_hand() -> Callable[[], object]:
        conn = new_sqlite()  # one per thread, as every other variant has
        return lambda: select_one(conn)

    def connect(pool: Any) -> Callable[[], Callable[[], object]]:
        def call() -> object:
            with pool.connect() as conn:
                return conn

        return lambda: call

    def connect_and_read(pool: Any) -> Callable[[], Callable[[], object]]:
        # One attribute read through what connect() returned, as any real body makes.
        def call() -> object:
            with pool.connect() as conn:
                return conn.total_changes

        return lambda: call

    found: dict[str, Callable[[], Callable[[], object]]] = {
        "by hand, select 1": by_hand,
        "hand-written decorator, select 1": lambda: handmade_select,
        "qdbpool @with_conn, select 1": lambda: decorated_select,
        "qdbpool @with_conn, trivial": lambda: decorated_trivial,
        "qdbpool SingletonPool connect()": connect(qdbpool.instance()),
        "qdbpool BoundedPool connect()": connect(bounded),
        "qdbpool SingletonPool connect(), 1 read": connect_and_read(qdbpool.instance()),
        "qdbpool BoundedPool connect(), 1 read": connect_and_read(bounded),
        "qdbpool @with_conn(pool=), metrics off": lambda: select_plain,
        "qdbpool @with_conn(pool=), metrics on": lambda: select_metered,
    }
    if with_quasardb:
        import quasardb.pool as qdb_pool

        qdb_pool.initialize(get_conn=new_sqlite)
        original_trivial = qdb_pool.with_conn()(trivial)
        found["quasardb.pool @with_conn, trivial"] = lambda: original_trivial
        found["quasardb.pool connect()"] = connect(qdb_pool.instance())
        found["quasardb.pool connect(), 1 read"] = connect_and_read(qdb_pool.instance())
    return found


def instrument_with_sdk(pool: qdbpool.Pool, cleanup: contextlib.ExitStack) -> None:
    """Publish `pool`'s metrics to an OpenTelemetry SDK meter provider, as an application
    would (an in-memory reader: collection, a minute apart in real use, is not timed)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from qdbpool.metrics import instrument

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    cleanup.callback(provider.shutdown)
    instrument(pool, name="bench", meter_provider=provider)


def per_round(variants: list[Variant], pair: Pair) -> list[float]:
    by_name = {v.name: v for v in variants}
    top, bottom = by_name[pair.numerator], by_name[pair.denominator]
    return [a / b for a, b in zip(top.samples, bottom.samples, strict=True)]


def timed(quick: bool) -> int:
    rounds, per_slice = (3, 2_000) if quick else (25, 20_000)
    print(
        f"bench.overhead: {pin_to_one_cpu()}; {rounds} rounds of {per_slice} calls per thread"
        " per variant, in a shuffled order each round"
    )
    qdbpool.initialize(SQLite(":memory:"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(qdbpool.close)
        named = makers(cleanup)
        for make_call in named.values():
            make_call()()  # warm: this thread's connections exist before any slice is timed
        lines = []
        for threads in THREAD_COUNTS:
            # Every thread makes `per_slice` calls: shorter slices would time mostly the
            # threads' wake-ups and GIL hand-overs.
            variants = [Variant(name, make_call) for name, make_call in named.items()]
            compare(variants, threads=threads, rounds=rounds, calls=per_slice)
            print(table(f"\n{threads} thread(s):", variants, variants[1]))
            lines.append(f"\n{threads} thread(s), medians of per-round ratios:")
            for pair in PAIRS:
                ratios = [per_round(variants, pair)]
                if pair.at_least is None and pair.at_most is None:
                    judged = interval(ratios)
                else:
                    judged = verdict(
                        ratios, at_least=pair.at_least, at_most=pair.at_most, quick=quick
                    )
                lines.append(f"  {pair.label:<54} {judged}")
        print("\n".join(lines))
    return 0


# ------------------------------------------------------------------ instruction counts

COUNTED = [
    "hand-written decorator, select 1",
    "qdbpool @with_conn, select 1",
    "qdbpool @with_conn, trivial",
    "quasardb.pool @with_conn, trivial",
    "qdbpool @with_conn(pool=), metrics off",
    "qdbpool @with_conn(pool=), metrics on",
    "qdbpool SingletonPool connect()",
    "qdbpool BoundedPool connect()",
    "quasardb.pool connect()",
]


def run_calls(name: str, count: int) -> None:
    """The child's work under callgrind: `count` calls of one variant in a worker thread,
    after a warm-up call. os.getppid() and os.getpgrp() mark the counted stretch: callgrind
    zeroes its counters before libc's getppid and writes them out before getpgrp."""
    qdbpool.initialize(SQLite(":memory:"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(qdbpool.close)
        call = makers(cleanup, with_quasardb="quasardb" in name)[name]()
        failed: list[BaseException] = []

        def work() -> None:
            try:
                call()  # warm: the thread's connection exists before counting starts
                os.getppid()
                for _ in range(count):
                    call()
                os.getpgrp()
            except BaseException as exc:
                failed.append(exc)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    if failed:
        raise failed[0]


def callgrind_count(name: str, count: int, out: Path) -> int:
    """Instructions (every thread's) from just before the first of `count` calls of `name`
    to just after the last, warm-up done."""
    log = out / f"callgrind.{COUNTED.index(name)}"
    subprocess.run(
        [
            *("valgrind", "--tool=callgrind", f"--callgrind-out-file={log}"),
            *("--zero-before=getppid", "--dump-before=getpgrp"),
            *(sys.executable, "-m", "bench.overhead", "--child", name, "--calls", str(count)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    counted = log.with_name(log.name + ".1")  # the dump before getpgrp
    for line in counted.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {counted}")


def instructions(quick: bool) -> int:
    if shutil.which("valgrind") is None:
        print("bench.overhead --instructions: valgrind is not installed (apt-get install valgrind)")
        return 1
    count = 2_000 if quick else 20_000
    print(
        f"bench.overhead --instructions: callgrind, {count} calls in a worker thread after a"
        " warm-up call; instructions per call, the loop's own included"
    )
    counts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qdbpool-callgrind-") as tmp:
        for name in COUNTED:
            counts[name] = callgrind_count(name, count, Path(tmp)) / count
            print(f"  {name:<36} {counts[name]:>10,.0f}", flush=True)
    hand, ours = counts[COUNTED[0]], counts[COUNTED[1]]
    trivial_ours, theirs = counts[COUNTED[2]], counts[COUNTED[3]]
    print(f"(a) qdbpool / hand-written, select 1: {ours / hand:.3f}")
    print(f"(b) quasardb.pool / qdbpool, trivial: {theirs / trivial_ours:.3f}")
    off, on = counts[COUNTED[4]], counts[COUNTED[5]]
    print(f"(d) metrics to an OTel SDK / none, select 1: {on / off:.3f}")
    singleton, bounded, anchor = (counts[name] for name in COUNTED[6:9])
    print(f"(c) connect(): quasardb.pool / SingletonPool: {anchor / singleton:.3f}")
    print(f"(c) connect(): quasardb.pool / BoundedPool: {anchor / bounded:.3f}")
    return 0


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: judges nothing")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (callgrind) for (a) to (d)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_calls(args.child, args.calls)
        return 0
    if args.instructions:
        return instructions(args.quick)
    return timed(args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
