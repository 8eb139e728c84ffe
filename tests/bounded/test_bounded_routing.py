"""A BoundedPool over a routing factory under mixed reads and writes (issue 11 §6): a
release goes to a waiter of its own route, so steady mixed load opens (almost) no new
connections, and the pool never holds more than max_size."""

from __future__ import annotations

import sqlite3
import threading
import time

from qdbpool import BoundedPool
from qdbpool.factories import SQLite

THREADS = 16
CALLS = 300


class RoutingSQLite(SQLite):
    """SQLite standing in for a primary and a replica: routes reads, counts opens."""

    routes_reads = True

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.opened = 0
        self.open_now = 0
        self.most_open = 0
        self._lock = threading.Lock()

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        with self._lock:
            self.opened += 1
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
        return super().connect(read_only=read_only)

    def close_connection(self, conn: sqlite3.Connection) -> None:
        super().close_connection(conn)
        with self._lock:
            self.open_now -= 1


def run_mixed_load(pool: BoundedPool, read_share: float) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS, timeout=30)

    def worker(index: int) -> None:
        start.wait()
        try:
            for call in range(CALLS):
                read_only = (call * THREADS + index) % 100 < read_share * 100
                with pool.connect(read_only=read_only) as conn:
                    conn.execute("SELECT 1").fetchone()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_mixed_reads_and_writes_open_at_most_one_connection_per_hundred_checkouts():
    factory = RoutingSQLite()
    pool = BoundedPool(factory, size=4, timeout=60)
    try:
        run_mixed_load(pool, read_share=0.5)
        checkouts = pool.stats().checkouts
        assert checkouts == THREADS * CALLS
        assert factory.opened / checkouts <= 0.01, (factory.opened, checkouts)
        assert factory.most_open <= pool.max_size
    finally:
        pool.close(timeout=0)


def test_a_reader_waiting_behind_writers_is_served_when_no_reader_connection_exists():
    factory = RoutingSQLite()
    pool = BoundedPool(factory, size=2, timeout=10)
    try:
        writer_a, writer_b = pool.connect(), pool.connect()  # the pool is full of writers
        got: list[sqlite3.Connection] = []
        t = threading.Thread(target=lambda: got.append(pool.connect(read_only=True)))
        t.start()
        writer_a.close()  # no reader connection exists: this one's capacity goes to the reader
        t.join(10)
        assert len(got) == 1
        got[0].close()
        writer_b.close()
        assert factory.most_open <= 2
    finally:
        pool.close(timeout=0)


def test_readers_get_a_turn_while_writers_keep_every_connection_busy():
    # Writers alone can keep every connection busy: each release finds a writer waiting.
    # A reader that has waited a while must still get one (a writer connection's capacity
    # is traded to it), not wait out its timeout.
    factory = RoutingSQLite()
    pool = BoundedPool(factory, size=2, timeout=3)
    readers_done = threading.Event()
    errors: list[BaseException] = []
    reads_each = 10

    def writer() -> None:
        deadline = time.monotonic() + 60
        try:
            while not readers_done.is_set() and time.monotonic() < deadline:
                with pool.connect() as conn:
                    conn.execute("SELECT 1").fetchone()
                    time.sleep(0.001)  # the query's time: others queue meanwhile
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(reads_each):
                with pool.connect(read_only=True) as conn:
                    conn.execute("SELECT 1").fetchone()
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer) for _ in range(6)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    try:
        for t in writers + readers:
            t.start()
        for t in readers:
            t.join(60)
        readers_done.set()
        for t in writers:
            t.join(60)
        assert not any(t.is_alive() for t in writers + readers)
        assert errors == []
        # Trades open connections: one per reader's wait, at most, not one per checkout.
        assert factory.opened <= 2 + 3 * reads_each, factory.opened
        assert factory.most_open <= pool.max_size
    finally:
        pool.close(timeout=0)


def test_a_route_with_no_connection_gets_the_next_ones_capacity(poll):
    # As after a failover: readers hold every connection, and the writers' are gone. A
    # writer must not wait TRADE_AFTER for its turn: once it is first in line, the next
    # reader connection to come back is traded for it.
    factory = RoutingSQLite()
    pool = BoundedPool(factory, size=2, timeout=5)
    readers, served, lock = 3, [0], threading.Lock()
    writer_done = threading.Event()

    def reader() -> None:
        deadline = time.monotonic() + 30
        while not writer_done.is_set() and time.monotonic() < deadline:
            with pool.connect(read_only=True) as conn:
                conn.execute("SELECT 1").fetchone()
                time.sleep(0.001)
            with lock:
                served[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    try:
        for t in threads:
            t.start()
        poll(lambda: served[0] >= 10, interval=0.001, what="both connections the readers'")
        queued_at = served[0]
        with pool.connect():
            reads_meanwhile = served[0] - queued_at
    finally:
        writer_done.set()
        for t in threads:
            t.join(30)
        pool.close(timeout=0)
    # The readers ahead of it in line, then one more release, traded.
    assert reads_meanwhile <= readers + 1, reads_meanwhile


def test_an_impatient_caller_does_not_take_the_last_connection_of_the_other_route():
    # Ten writers and a reader over two connections: writers wait long enough to be
    # impatient, but trading the reader's only connection away would only make the
    # reader trade it back at once, a new connection each way, again and again.
    factory = RoutingSQLite()
    pool = BoundedPool(factory, size=2, timeout=10)
    errors: list[BaseException] = []

    def caller(read_only: bool) -> None:
        try:
            for _ in range(6):
                with pool.connect(read_only=read_only) as conn:
                    conn.execute("SELECT 1").fetchone()
                    time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n >= 10,)) for n in range(11)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        # One per route, after a trade or two to get there (who came first took both);
        # trading back and forth opened 13 or more.
        assert factory.opened <= 6, factory.opened
    finally:
        pool.close(timeout=0)
