"""qdbpool on SQLite: every thread gets its own connection through @with_conn.

Run: make demo. It needs no server: the database is a file in a temporary directory.
It shows (1) four long-lived workers, each on its own connection for all its calls,
(2) thread churn — 200 short-lived threads that come and go — and the pool closing
their connections as they end, and (3) the pool's counters at the end.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from pathlib import Path

import qdbpool as pool
from qdbpool.factories import SQLite


@pool.with_conn()
def record(conn: sqlite3.Connection, worker: str) -> int:
    """Insert one row and say which connection did it."""
    conn.execute("INSERT INTO visits(worker, conn_id) VALUES (?, ?)", (worker, id(conn)))
    conn.commit()
    return id(conn)


@pool.with_conn()
def count_rows(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM visits").fetchone()
    return int(row[0])


def long_lived_worker(name: str, calls: int, seen: dict[str, set[int]]) -> None:
    seen[name] = {record(name) for _ in range(calls)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qdbpool-demo-") as tmp:
        db = Path(tmp) / "demo.sqlite3"
        # timeout: SQLite serializes writers; let a thread wait for the lock briefly.
        pool.initialize(SQLite(db, timeout=10))

        with pool.instance().connect() as conn:  # ad-hoc code: `with` releases, never closes
            conn.execute("CREATE TABLE visits(worker TEXT, conn_id INTEGER)")
            conn.commit()

        print("1) four workers, 25 calls each: one connection per thread, reused")
        seen: dict[str, set[int]] = {}
        workers = [
            threading.Thread(target=long_lived_worker, args=(f"worker-{i}", 25, seen))
            for i in range(4)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        for name in sorted(seen):
            print(f"   {name}: {len(seen[name])} distinct connection(s) for 25 calls")
        distinct = len(set().union(*seen.values()))
        print(f"   {distinct} distinct connections across the 4 threads")

        print("2) thread churn: 200 short-lived threads, 20 at a time, one call each")
        for batch in range(10):
            churn = [threading.Thread(target=record, args=(f"churn-{batch}",)) for _ in range(20)]
            for t in churn:
                t.start()
            for t in churn:
                t.join()
        stats = pool.instance().stats()
        print(f"   after they ended: {stats.open} connection(s) open (the main thread's)")

        print(f"3) rows written: {count_rows()}")
        stats = pool.instance().stats()
        print(
            f"   pool stats: open={stats.open} created={stats.created} closed={stats.closed} "
            f"discarded={stats.discarded} checkouts={stats.checkouts}"
        )
        pool.close()
        print(f"   after pool.close(): open={pool.instance().stats().open}")


if __name__ == "__main__":
    main()
