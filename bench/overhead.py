"""Cost of @with_conn per call, on a warm thread, against what users would otherwise write.

The decorated body calls one method of its connection: `conn.cursor()` on an in-memory
SQLite connection, the DB-API call every peer here supports (~0.3-1 us). A second
table uses `conn.commit()` on an idle connection (~50 ns), which shows the wrappers'
own cost almost bare.
Variants: the body with a connection passed by hand; a hand-written threading.local
decorator; qdbpool's @with_conn (default checks on: liveness at checkout, reset check
at release); qdbpool's `with instance().connect() as conn`; quasardb.pool's @with_conn;
DBUtils PersistentDB. Printed: median ns per call and the median per-round ratio.
Run: make bench (or python bench/overhead.py [--quick]).
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Variant, compare, pin_to_one_cpu, ratio, table

import qdbpool
from qdbpool.factories import SQLite


def query(conn: sqlite3.Connection) -> None:
    conn.cursor()


def commit(conn: sqlite3.Connection) -> None:
    conn.commit()


body = query


def by_hand() -> Callable[[], object]:
    conn = sqlite3.connect(":memory:")
    return lambda: body(conn)  # body is looked up per call: main() swaps it per table


_local = threading.local()


def hand_written(fn: Callable[..., None]) -> Callable[..., None]:
    # What a team writes in ten lines when it has no library.
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        conn = getattr(_local, "conn", None)
        if conn is None:
            conn = _local.conn = sqlite3.connect(":memory:", check_same_thread=False)
        return fn(conn, *args, **kwargs)

    return wrapper


def variants() -> list[Variant]:
    import quasardb.pool as qdb_pool
    from dbutils.persistent_db import PersistentDB

    qdbpool.initialize(SQLite(":memory:"))
    qdb_pool.initialize(get_conn=lambda: sqlite3.connect(":memory:", check_same_thread=False))
    persistent = PersistentDB(sqlite3, database=":memory:", check_same_thread=False)

    decorated = qdbpool.with_conn(lambda conn: body(conn))
    handmade = hand_written(lambda conn: body(conn))
    original = qdb_pool.with_conn()(lambda conn: body(conn))

    def with_connect() -> None:
        with qdbpool.instance().connect() as conn:
            body(conn)

    def dbutils() -> None:
        body(persistent.connection())

    return [
        Variant("by hand", by_hand),
        Variant("hand-written decorator", lambda: handmade),
        Variant("qdbpool @with_conn", lambda: decorated),
        Variant("qdbpool connect()", lambda: with_connect),
        Variant("quasardb.pool @with_conn", lambda: original),
        Variant("DBUtils PersistentDB", lambda: dbutils),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    args = parser.parse_args()
    rounds, calls = (5, 2_000) if args.quick else (25, 20_000)
    print(f"bench/overhead.py: {pin_to_one_cpu()}; {rounds} rounds, shuffled, medians of ratios")
    global body
    verdicts = []
    for body_fn, label in ((query, "conn.cursor()"), (commit, "conn.commit(), idle")):
        body = body_fn
        for threads in (1, 8):
            # Every thread makes `calls` calls: shorter slices would time mostly the
            # threads' wake-ups and GIL hand-overs (noise of +-10% between runs).
            vs = compare(variants(), threads=threads, rounds=rounds, calls=calls)
            hand, ours, original = vs[1], vs[2], vs[4]
            print(table(f"\nbody {label}, {threads} thread(s):", vs, hand))
            verdicts.append(
                f"{label:<26} {threads} thread(s): qdbpool = {ratio(ours, hand):.2f}x hand-written"
                f" (target <= 1.5); quasardb.pool = {ratio(original, ours):.2f}x qdbpool"
                f" (target >= 2.5)"
            )
    print("\n" + "\n".join(verdicts))
    qdbpool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
