"""Checking connections: lost ones discarded, old or idle ones replaced, pre-ping, hooks.

All of it is Pool's, so it runs against both pool classes (`pool_cls`).
"""

from __future__ import annotations

import sqlite3
import threading

import pytest

import qdbpool
from qdbpool import with_conn
from qdbpool.factories import SQLite


@with_conn
def which(conn):
    """The connection this thread gets."""
    return conn


# ----------------------------------------------------------------- closed or broken


def test_a_connection_closed_by_the_user_inside_with_conn_is_replaced(
    make_global_pool, recorder, closed_check
):
    pool = make_global_pool(recorder)

    @with_conn
    def close_it(conn):
        conn.close()

    close_it()
    fresh = which()

    assert fresh is recorder.created[1]
    assert not closed_check(fresh)
    assert fresh.execute("SELECT 1").fetchone() == (1,)
    assert pool.stats().discarded == 1


def test_a_connection_closed_by_the_user_through_a_session_wrapper_is_replaced(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as conn:
        conn.__wrapped__.close()
    with pool.connect() as conn:
        assert conn.__wrapped__ is recorder.created[1]
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_sqlite_factory_connection_closed_by_the_user_is_replaced(make_global_pool, tmp_path):
    pool = make_global_pool(SQLite(tmp_path / "db.sqlite"))

    @with_conn
    def close_it(conn):
        conn.close()
        return conn

    first = close_it()
    second = which()
    assert second is not first
    assert second.execute("SELECT 1").fetchone() == (1,)
    assert pool.stats().discarded == 1


def test_a_nested_checkout_of_a_connection_broken_by_the_outer_use_gets_a_working_one(
    make_pool, pool_cls, recorder
):
    # A helper that checks out again after the server ended the session under its caller:
    # a BoundedPool handed it the broken connection (sqlite3: "Cannot operate on a closed
    # database"), skipping the liveness look a nested checkout gets.
    pool = make_pool(
        recorder, pool_cls=pool_cls, **({"size": 1} if pool_cls is qdbpool.BoundedPool else {})
    )
    with pool.connect() as outer:
        outer.__wrapped__.close()
        with pool.connect() as inner:
            assert inner.__wrapped__ is recorder.created[1]
            assert inner.execute("SELECT 1").fetchone() == (1,)
    with pool.connect() as later:  # the outer release let the broken one go for good
        assert later.__wrapped__ is recorder.created[1]
    stats = pool.stats()
    assert (stats.open, stats.in_use, stats.discarded) == (1, 0, 1)


# ----------------------------------------------------------------- errors inside a checkout


def test_a_connection_error_inside_with_conn_propagates_and_discards_the_connection(
    make_global_pool, recorder, closed_check
):
    pool = make_global_pool(recorder)

    @with_conn
    def fail(conn):
        raise ConnectionError("link down")

    first = which()
    with pytest.raises(ConnectionError, match="link down"):
        fail()

    assert closed_check(first)
    assert which() is recorder.created[1]
    assert pool.stats().discarded == 1


def test_an_eof_error_inside_with_conn_discards_the_connection(
    make_global_pool, recorder, closed_check
):
    make_global_pool(recorder)

    @with_conn
    def fail(conn):
        raise EOFError

    first = which()
    with pytest.raises(EOFError):
        fail()
    assert closed_check(first)
    assert which() is not first


def test_a_connection_error_inside_a_with_block_discards_the_connection(
    make_pool, pool_cls, recorder, closed_check
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pytest.raises(ConnectionError), pool.connect():
        raise ConnectionError("link down")

    assert closed_check(recorder.created[0])
    with pool.connect() as conn:
        assert conn.__wrapped__ is recorder.created[1]


def test_an_error_from_a_closed_sqlite_handle_discards_the_connection(make_global_pool, tmp_path):
    pool = make_global_pool(SQLite(tmp_path / "db.sqlite"))

    @with_conn
    def fail(conn):
        conn.close()
        conn.execute("SELECT 1")  # sqlite3.ProgrammingError: closed database

    with pytest.raises(sqlite3.ProgrammingError):
        fail()
    assert which().execute("SELECT 1").fetchone() == (1,)
    assert pool.stats().discarded == 1


def test_an_sql_error_keeps_the_sqlite_connection(make_global_pool, tmp_path, closed_check):
    pool = make_global_pool(SQLite(tmp_path / "db.sqlite"))

    @with_conn
    def bad_sql(conn):
        conn.execute("SELEKT nonsense")

    first = which()
    with pytest.raises(sqlite3.OperationalError):
        bad_sql()

    assert not closed_check(first)
    assert which() is first
    assert pool.stats().discarded == 0


def test_an_ordinary_error_keeps_the_connection_of_a_plain_callable(
    make_global_pool, recorder, closed_check
):
    make_global_pool(recorder)

    @with_conn
    def fail(conn):
        raise ValueError("not a connection problem")

    first = which()
    with pytest.raises(ValueError):
        fail()
    assert which() is first
    assert not closed_check(first)


def test_an_ordinary_error_in_a_with_block_keeps_the_connection(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pytest.raises(sqlite3.OperationalError), pool.connect() as conn:
        conn.execute("SELEKT nonsense")
    with pool.connect() as conn:
        assert conn.__wrapped__ is recorder.created[0]


# ----------------------------------------------------------------- age and idleness


def test_max_lifetime_replaces_a_connection_older_than_it_counting_from_its_creation(
    make_global_pool, recorder, clock, closed_check
):
    make_global_pool(recorder, max_lifetime=10)
    first = which()
    clock.advance(5)
    assert which() is first
    clock.advance(6)  # 11 s old, though used 6 s ago
    second = which()

    assert second is recorder.created[1]
    assert closed_check(first)
    assert not closed_check(second)


def test_max_lifetime_applies_to_connect_too(make_pool, pool_cls, recorder, clock):
    pool = make_pool(recorder, pool_cls=pool_cls, max_lifetime=10)
    with pool.connect():
        pass
    clock.advance(11)
    with pool.connect() as conn:
        assert conn.__wrapped__ is recorder.created[1]
    assert pool.stats().discarded == 1


def test_max_idle_replaces_a_connection_idle_longer_than_it(
    make_global_pool, recorder, clock, closed_check
):
    make_global_pool(recorder, max_idle=10)
    first = which()
    clock.advance(8)
    assert which() is first
    clock.advance(8)  # 16 s old, but idle for 8 s only
    assert which() is first
    clock.advance(11)
    second = which()

    assert second is recorder.created[1]
    assert closed_check(first)


def test_max_idle_counts_from_the_end_of_the_last_use(make_global_pool, recorder, clock):
    make_global_pool(recorder, max_idle=10)

    @with_conn
    def slow(conn):
        clock.advance(30)  # a long call: the connection was in use, not idle
        return conn

    first = slow()
    clock.advance(5)
    assert which() is first


# ----------------------------------------------------------------- pre-ping


def test_pre_ping_true_pings_each_new_connection_and_each_outermost_checkout_only(
    make_global_pool, pingable
):
    make_global_pool(pingable, pre_ping=True)

    @with_conn
    def outer(conn):
        return inner()

    @with_conn
    def inner(conn):
        return conn

    conn = outer()  # a brand-new connection: pinged before its first use
    for _ in range(3):
        assert outer() is conn

    assert pingable.created == [conn]
    assert conn.pings == 4


def test_pre_ping_true_replaces_a_connection_whose_ping_fails(make_global_pool, pingable):
    pool = make_global_pool(pingable, pre_ping=True)
    first = which()
    first.ping_fails = True

    second = which()

    assert second is pingable.created[1]
    assert first.closed
    assert second.execute("SELECT 1").fetchone() == (1,)
    assert pool.stats().discarded == 1


def test_pre_ping_true_replaces_an_sqlite_connection_closed_while_idle(make_global_pool, tmp_path):
    make_global_pool(SQLite(tmp_path / "db.sqlite"), pre_ping=True)
    first = which()
    first.close()  # behind the pool's back, between two uses

    second = which()
    assert second is not first
    assert second.execute("SELECT 1").fetchone() == (1,)


def test_pre_ping_seconds_pings_only_after_that_much_idleness(make_global_pool, pingable, clock):
    make_global_pool(pingable, pre_ping=5)
    conn = which()
    clock.advance(3)
    assert which() is conn
    assert conn.pings == 0

    clock.advance(6)
    assert which() is conn
    assert conn.pings == 1


def test_pre_ping_seconds_replaces_a_failing_connection_after_idleness(
    make_global_pool, pingable, clock
):
    make_global_pool(pingable, pre_ping=5)
    first = which()
    first.ping_fails = True
    clock.advance(3)
    assert which() is first  # not idle long enough to be pinged
    clock.advance(6)
    assert which() is pingable.created[1]
    assert first.closed


def test_no_pre_ping_by_default(make_global_pool, pingable):
    make_global_pool(pingable)
    conn = which()
    for _ in range(3):
        which()
    assert conn.pings == 0


# ----------------------------------------------------------------- hooks


def test_configure_is_called_once_per_new_connection(make_global_pool, pool_cls, recorder):
    configured: list[sqlite3.Connection] = []
    make_global_pool(recorder, configure=configured.append)

    @with_conn
    def kill(conn):
        conn.close()

    for _ in range(3):
        which()
    t = threading.Thread(target=which)
    t.start()
    t.join(30)
    kill()  # the main thread's connection is replaced ...
    which()  # ... by a new one, configured in turn

    assert configured == recorder.created
    # The other thread: a SingletonPool opens a connection for it, a BoundedPool lends it
    # the idle one.
    assert len(configured) == (3 if pool_cls is qdbpool.SingletonPool else 2)


def test_configure_runs_before_the_connection_is_handed_out(make_global_pool, recorder):
    make_global_pool(recorder, configure=lambda c: setattr(c, "row_factory", sqlite3.Row))

    @with_conn
    def row(conn):
        return conn.execute("SELECT 1 AS one").fetchone()

    assert row()["one"] == 1


def test_reset_runs_at_each_outermost_release_only(make_global_pool, recorder):
    resets: list[sqlite3.Connection] = []
    make_global_pool(recorder, reset=resets.append)

    @with_conn
    def inner(conn):
        return len(resets)

    @with_conn
    def outer(conn):
        first, second = inner(), inner()
        return first, second, len(resets)

    assert outer() == (0, 0, 0)
    assert resets == recorder.created
    outer()
    assert len(resets) == 2


def test_reset_runs_when_a_with_block_releases_the_outermost_checkout(
    make_pool, pool_cls, recorder
):
    resets: list[sqlite3.Connection] = []
    pool = make_pool(recorder, pool_cls=pool_cls, reset=resets.append)
    with pool.connect():
        with pool.connect():
            pass
        assert resets == []
    assert resets == recorder.created


def test_sqlite_factory_rolls_back_an_open_transaction_at_release(make_global_pool, tmp_path):
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    setup.close()
    make_global_pool(SQLite(path))

    @with_conn
    def insert_without_commit(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.in_transaction
        return conn

    conn = insert_without_commit()

    assert not conn.in_transaction
    observer = sqlite3.connect(path)
    try:
        assert observer.execute("SELECT count(*) FROM t").fetchone() == (0,)
        # and the rollback let go of the write lock: another connection can write
        observer.execute("INSERT INTO t VALUES (2)")
        observer.commit()
    finally:
        observer.close()


def test_sqlite_factory_rolls_back_only_when_the_outermost_decorated_call_ends(
    make_global_pool, sqlite_factory
):
    pool = make_global_pool(sqlite_factory)

    @with_conn
    def inner(conn):
        conn.execute("INSERT INTO t VALUES (1)")  # opens a transaction

    @with_conn
    def outer(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        conn.commit()
        inner()
        rows = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        return conn.in_transaction, rows

    assert outer() == (True, 1)  # the inner release did not roll the outer's work back

    @with_conn
    def count(conn):
        return conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]

    assert count() == 0  # the outermost release did
    assert pool.stats().created == 1


def test_a_warm_threads_decorated_call_has_its_open_transaction_rolled_back(tmp_path):
    # The thread already holds its connection, so @with_conn releases it without going
    # through the pool's checkin: the rollback must happen there all the same.
    path = tmp_path / "db.sqlite"
    qdbpool.initialize(SQLite(path))

    @with_conn
    def write(conn, commit):
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        if commit:
            conn.commit()
        return conn

    first = write(True)
    again = write(False)

    assert again is first and not again.in_transaction
    assert again.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert qdbpool.instance().stats().created == 1


def test_sqlite_factory_keeps_what_was_committed(make_global_pool, tmp_path):
    path = tmp_path / "db.sqlite"
    make_global_pool(SQLite(path))

    @with_conn
    def write(conn):
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()

    write()
    observer = sqlite3.connect(path)
    try:
        assert observer.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        observer.close()


def test_sqlite_factory_rolls_back_when_a_with_block_releases(make_pool, pool_cls, tmp_path):
    pool = make_pool(SQLite(tmp_path / "db.sqlite"), pool_cls=pool_cls)
    with pool.connect() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.commit()
        conn.execute("INSERT INTO t VALUES (1)")
    with pool.connect() as conn:
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
