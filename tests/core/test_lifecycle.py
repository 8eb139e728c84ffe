"""When connections close: the end of their thread, pool.close(), `with SingletonPool(...)`.

What both pool classes share runs against each (`pool_cls`); the end of a thread is a
SingletonPool's alone.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

import qdbpool
from qdbpool import PoolClosedError, with_conn

JOIN = 30  # seconds: a bound on every join, never reached when things work


class CountingConnection:
    """A real sqlite3 connection that counts the calls to its close()."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.close_calls = 0
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        try:
            self.db.total_changes  # noqa: B018
        except sqlite3.ProgrammingError:
            return True
        return False

    def execute(self, sql: str) -> sqlite3.Cursor:
        return self.db.execute(sql)

    def close(self) -> None:
        with self._lock:
            self.close_calls += 1
        self.db.close()


# ----------------------------------------------------------------- the end of a thread


def test_a_threads_connection_is_closed_when_the_thread_ends(
    global_pool, recorder, closed_check, threads
):
    @with_conn
    def use(conn):
        return conn.execute("SELECT 1").fetchone()

    t = threads(use)
    t.join(JOIN)

    assert len(recorder.created) == 1
    assert closed_check(recorder.created[0])
    assert global_pool.stats().open == 0
    assert t is not None  # the Thread object is still alive here


def test_a_connect_never_released_is_closed_when_its_thread_ends_and_drops_it(
    make_pool,
    recorder,
    closed_check,
    threads,
):
    pool = make_pool(recorder)
    t = threads(lambda: pool.connect().execute("SELECT 1"))
    t.join(JOIN)

    assert closed_check(recorder.created[0])
    assert pool.stats().open == 0


def test_two_thousand_short_lived_threads_leave_no_connection_open(global_pool, recorder):
    @with_conn
    def use(conn):
        return conn.execute("SELECT 1").fetchone()[0]

    results: list[int] = []
    threads: list[threading.Thread] = []  # kept alive on purpose while we check
    for _batch in range(40):
        batch = [threading.Thread(target=lambda: results.append(use())) for _ in range(50)]
        for t in batch:
            t.start()
        for t in batch:
            t.join(JOIN)
        threads.extend(batch)

    assert len(threads) == 2000
    assert not any(t.is_alive() for t in threads)
    assert results == [1] * 2000
    assert len(recorder.created) == 2000
    assert global_pool.stats().open == 0
    assert recorder.still_open() == []
    assert global_pool.stats().created == global_pool.stats().closed == 2000


# ----------------------------------------------------------------- pool.close()


def test_close_closes_idle_connections_of_live_threads_at_once(
    make_pool, recorder, closed_check, threads
):
    pool = make_pool(recorder)
    used, done = threading.Event(), threading.Event()
    after_close: list[BaseException] = []

    def holder() -> None:
        with pool.connect() as conn:
            conn.execute("SELECT 1")
        used.set()
        done.wait(JOIN)
        try:
            pool.connect()
        except BaseException as exc:
            after_close.append(exc)

    t = threads(holder)
    assert used.wait(JOIN)
    with pool.connect():
        pass

    started = time.monotonic()
    pool.close(timeout=30)
    assert time.monotonic() - started < 10  # nothing in use: no waiting for the timeout
    assert [closed_check(c) for c in recorder.created] == [True, True]
    assert pool.stats().open == 0

    done.set()
    t.join(JOIN)
    assert [type(e) for e in after_close] == [PoolClosedError]


def test_connect_after_close_raises_pool_closed_error(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect():
        pass
    pool.close()
    with pytest.raises(PoolClosedError):
        pool.connect()
    with pytest.raises(PoolClosedError):
        pool.connect(read_only=True)
    assert recorder.still_open() == []


def test_close_is_idempotent(make_pool, pool_cls, recorder, closed_check):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect():
        pass
    pool.close()
    pool.close()
    pool.close(timeout=0)

    assert pool.closed
    assert closed_check(recorder.created[0])
    stats = pool.stats()
    assert (stats.open, stats.created, stats.closed) == (0, 1, 1)


def test_concurrent_close_from_eight_threads_closes_each_connection_once(make_pool, threads):
    made: list[CountingConnection] = []

    def get_conn() -> CountingConnection:
        conn = CountingConnection()
        made.append(conn)
        return conn

    pool = make_pool(get_conn)
    ready = threading.Barrier(4)
    release = threading.Event()

    def holder() -> None:
        with pool.connect():
            pass
        ready.wait(JOIN)
        release.wait(JOIN)

    holders = [threads(holder) for _ in range(3)]
    ready.wait(JOIN)

    closers_ready = threading.Barrier(8)
    errors: list[BaseException] = []

    def closer() -> None:
        try:
            closers_ready.wait(JOIN)
            pool.close()
        except BaseException as exc:
            errors.append(exc)

    closers = [threads(closer) for _ in range(8)]
    for t in closers:
        t.join(JOIN)
    release.set()
    for t in holders:
        t.join(JOIN)

    assert errors == []
    assert len(made) == 3
    assert [c.close_calls for c in made] == [1, 1, 1]
    stats = pool.stats()
    assert (stats.open, stats.closed) == (0, 3)


def test_close_waits_for_a_connection_in_use_by_another_thread_then_closes_it(
    make_pool,
    pool_cls,
    recorder,
    closed_check,
    threads,
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    checked_out, may_release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def user() -> None:
        with pool.connect() as conn:
            checked_out.set()
            may_release.wait(JOIN)
            # close() has started: our connection must still work while we hold it.
            seen["answer"] = conn.execute("SELECT 42").fetchone()
            seen["closer_alive"] = closer.is_alive()

    t = threads(user)
    assert checked_out.wait(JOIN)
    closer = threads(pool.close, 30.0)

    deadline = time.monotonic() + JOIN
    while not pool.closed and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool.closed
    assert not closed_check(recorder.created[0])

    may_release.set()
    t.join(JOIN)
    closer.join(JOIN)

    assert seen == {"answer": (42,), "closer_alive": True}
    assert not closer.is_alive()
    assert closed_check(recorder.created[0])
    assert pool.stats().open == 0


def test_close_returns_as_soon_as_a_decorated_call_in_another_thread_ends(
    global_pool,
    recorder,
    closed_check,
    threads,
):
    # @with_conn releases a clean connection without calling into the pool: close() must
    # still hear of it, rather than wait out its timeout.
    in_call, may_return, returned, may_end = (threading.Event() for _ in range(4))

    @with_conn
    def hold(conn, wait):
        if wait:
            in_call.set()
            may_return.wait(JOIN)
        return conn.execute("SELECT 5").fetchone()

    def user() -> None:
        hold(False)  # the thread's connection now exists: the next call takes the fast path
        results.append(hold(True))
        returned.set()
        may_end.wait(JOIN)  # the end of the thread would close its connection anyway

    hold(False)
    results: list[object] = []
    t = threads(user)
    assert in_call.wait(JOIN)

    closer = threads(global_pool.close, JOIN)
    deadline = time.monotonic() + JOIN
    while len(recorder.still_open()) > 1 and time.monotonic() < deadline:
        time.sleep(0.001)  # until close() has closed the main thread's idle connection
    held_by_t = recorder.still_open()
    assert len(held_by_t) == 1 and global_pool.closed and closer.is_alive()

    released = time.monotonic()
    may_return.set()
    closer.join(JOIN)
    assert not closer.is_alive() and time.monotonic() - released < JOIN / 2
    assert returned.wait(JOIN) and results == [(5,)] and t.is_alive()
    assert closed_check(held_by_t[0])
    assert global_pool.stats().open == 0
    may_end.set()
    t.join(JOIN)


def test_close_with_timeout_returns_but_never_closes_a_connection_under_its_holder(
    make_pool,
    pool_cls,
    recorder,
    closed_check,
    threads,
):
    # Freeing a connection under the thread using it can crash the interpreter (sqlite3,
    # libpq): close() gives up waiting after `timeout`, and the holder closes it on release.
    pool = make_pool(recorder, pool_cls=pool_cls)
    checked_out, finish = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def holder() -> None:
        conn = pool.connect()
        checked_out.set()
        finish.wait(JOIN)
        try:
            seen["answer"] = conn.execute("SELECT 7").fetchone()
            conn.close()  # the release: now it is closed for good
        except BaseException as exc:
            seen["error"] = exc

    t = threads(holder)
    assert checked_out.wait(JOIN)

    started = time.monotonic()
    pool.close(timeout=0.2)
    elapsed = time.monotonic() - started

    assert 0.15 <= elapsed < 10
    assert not closed_check(recorder.created[0])
    # Counted closed already: its holder closes the driver connection when it lets go.
    assert (pool.stats().open, pool.stats().in_use, pool.stats().closed) == (0, 0, 1)
    started = time.monotonic()
    pool.close(timeout=5)  # nothing left to wait for
    assert time.monotonic() - started < 1
    finish.set()
    t.join(JOIN)
    assert seen == {"answer": (7,)}
    assert closed_check(recorder.created[0])
    assert (pool.stats().open, pool.stats().closed) == (0, 1)


def test_closing_the_global_pool_inside_a_decorated_call_leaves_its_connection_closed(
    make_global_pool, recorder, closed_check
):
    pool = make_global_pool(recorder)

    @with_conn
    def use(conn):
        qdbpool.close()
        return conn

    use()
    assert closed_check(recorder.created[0])
    assert pool.stats().open == 0


def test_with_block_on_the_pool_closes_it_on_exit(pool_cls, recorder, closed_check):
    with pool_cls(recorder) as pool:
        with pool.connect() as conn:
            conn.execute("SELECT 1")
        assert not pool.closed

    assert pool.closed
    assert closed_check(recorder.created[0])
    with pytest.raises(PoolClosedError):
        pool.connect()


def test_with_block_on_the_pool_closes_it_when_an_error_leaves_the_block(
    pool_cls, recorder, closed_check
):
    with pytest.raises(KeyError), pool_cls(recorder) as pool:
        with pool.connect():
            pass
        raise KeyError("x")

    assert pool.closed
    assert closed_check(recorder.created[0])
