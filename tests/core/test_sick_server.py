"""A server that accepts connections and fails every check gets no connection storm
(issue 11 §2): connect() gives up within its timeout, naming the last failure; attempts back
off; recovery is immediate once the server heals.

The sick server here is SQLite behind a factory whose connections fail their ping while the
test says so: the embedded default, where the old code opened 100,000 connections in 5 s.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

import qdbpool
from qdbpool import BoundedPool, PoolTimeoutError, SingletonPool
from qdbpool.backoff import MAX_DELAY
from qdbpool.factories import SQLite


class SickSQLite(SQLite):
    """SQLite whose connections answer no ping while `sick` is set; counts every open."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.sick = True
        self.opened = 0
        self.refuse = False
        self._lock = threading.Lock()

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        with self._lock:
            self.opened += 1
        if self.refuse:
            raise sqlite3.OperationalError("connection refused")
        return super().connect(read_only=read_only)

    def ping(self, conn: sqlite3.Connection) -> None:
        if self.sick:
            raise sqlite3.OperationalError("SELECT 1 failed: the server is sick")
        super().ping(conn)


def test_a_pool_with_pre_ping_gives_up_within_its_timeout_naming_the_last_failure(
    make_pool, pool_cls
):
    factory = SickSQLite()
    if pool_cls is BoundedPool:
        pool = make_pool(factory, pool_cls=BoundedPool, size=2, timeout=1.0, pre_ping=True)
    else:
        pool = make_pool(factory, pre_ping=True)
        pool._timeout = 1.0  # its fixed 30 s, shortened for the test
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError) as caught:
        pool.connect()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + MAX_DELAY  # its timeout, give or take one pause
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "sick" in str(caught.value.__cause__)
    # 50, 100, 200, 400 ms pauses (halved at most by jitter) fit in a second: a handful.
    assert factory.opened <= 8, factory.opened
    assert pool.stats().open == 0


def test_many_waiting_callers_open_a_few_connections_a_second_each():
    factory = SickSQLite()
    pool = BoundedPool(factory, size=4, max_size=8, timeout=2.0, pre_ping=True)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            pool.connect()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started
    pool.close(timeout=0)
    assert len(errors) == 8 and all(isinstance(e, PoolTimeoutError) for e in errors)
    per_caller_per_second = factory.opened / 8 / elapsed
    assert per_caller_per_second <= 5, (factory.opened, elapsed)


def test_recovery_is_immediate_once_the_server_heals(make_pool):
    factory = SickSQLite()
    # A timeout longer than the longest pause, so that a healed server is tried in time.
    pool = make_pool(factory, pool_cls=BoundedPool, size=2, timeout=MAX_DELAY + 0.2, pre_ping=True)
    with pytest.raises(PoolTimeoutError):
        pool.connect()
    factory.sick = False
    started = time.monotonic()
    with pool.connect() as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)
    assert time.monotonic() - started <= MAX_DELAY + 0.2  # at most the pause left
    started = time.monotonic()
    for _ in range(20):  # the pause is gone once one attempt worked
        with pool.connect() as conn:
            conn.execute("SELECT 1")
    assert time.monotonic() - started < 1


def test_a_refusing_server_raises_the_driver_error_and_later_attempts_back_off():
    factory = SickSQLite()
    factory.refuse = True
    qdbpool.initialize(factory)

    @qdbpool.with_conn
    def use(conn: sqlite3.Connection) -> None:
        pass

    deadline = time.monotonic() + 1.0
    errors = 0
    for _ in range(10_000):  # a tight retry loop in user code
        if time.monotonic() > deadline:
            break
        try:
            use()
        except (sqlite3.OperationalError, PoolTimeoutError):
            errors += 1
    assert errors >= 1
    assert factory.opened <= 10, factory.opened  # not thousands
    factory.refuse = False
    healed_by = time.monotonic() + MAX_DELAY + 1  # the pause left, at most, and a margin
    while True:
        try:
            use()
            break
        except PoolTimeoutError:  # still inside the last pause: the next call may try
            assert time.monotonic() < healed_by
            time.sleep(0.05)


def test_closing_the_pool_wakes_a_caller_waiting_out_a_pause():
    factory = SickSQLite()
    pool = BoundedPool(factory, size=1, timeout=30, pre_ping=True)
    outcome: list[BaseException] = []

    def caller() -> None:
        try:
            pool.connect()
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    deadline = time.monotonic() + 10
    while factory.opened < 3 and time.monotonic() < deadline:  # it is backing off by now
        time.sleep(0.01)
    pool.close(timeout=0)
    t.join(5)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], qdbpool.PoolClosedError)


def test_a_factory_that_paces_its_own_attempts_gets_no_pause_from_the_pool():
    # A routing factory waits for a new primary and backs off per host by itself: a pause
    # of the pool's own after a failed connect() would only delay writes after a failover.
    factory = SickSQLite()
    factory.paces_connects = True
    factory.refuse = True
    pool = SingletonPool(factory)
    try:
        for _ in range(5):  # five refusals in a row ...
            with pytest.raises(sqlite3.OperationalError):
                pool.connect()
        factory.refuse = False
        started = time.monotonic()
        with pool.connect() as conn:  # ... and the next attempt is made at once
            conn.execute("SELECT 1")
        assert time.monotonic() - started < 0.05
    finally:
        pool.close(timeout=0)
