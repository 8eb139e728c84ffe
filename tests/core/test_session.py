"""pool.connect() / pool.release(): the SessionWrapper around the thread's connection, the
same for both pool classes (`pool_cls`) but where a SingletonPool keeps one per thread."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from qdbpool import SessionWrapper, with_conn


def test_connect_returns_a_session_wrapper_that_passes_for_the_driver_connection(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    conn = pool.connect()
    try:
        assert type(conn) is SessionWrapper
        assert isinstance(conn, SessionWrapper)
        assert isinstance(conn, sqlite3.Connection)
        assert conn.__wrapped__ is recorder.created[0]
    finally:
        conn.close()


def test_session_wrapper_passes_attribute_access_to_the_driver_connection(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        conn.row_factory = sqlite3.Row
        assert recorder.created[0].row_factory is sqlite3.Row
        assert conn.in_transaction is False


def test_session_wrapper_is_an_instance_of_the_driver_connection_class(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as conn:
        assert isinstance(conn, sqlite3.Connection)
        assert conn.__class__ is sqlite3.Connection


def test_session_wrapper_repr_identifies_the_driver_connection(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as conn:
        text = repr(conn)
    raw = recorder.created[0]
    assert type(raw).__name__ in text
    assert f"{id(raw):x}" in text


def test_with_block_releases_the_connection_without_closing_it(
    make_pool, pool_cls, recorder, closed_check
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect():
        assert pool.stats().in_use == 1

    raw = recorder.created[0]
    assert not closed_check(raw)
    assert pool.stats().in_use == 0
    assert pool.stats().open == 1
    assert raw.execute("SELECT 1").fetchone() == (1,)


def test_close_on_the_wrapper_releases_the_connection_without_closing_it(
    make_pool, pool_cls, recorder, closed_check
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    conn = pool.connect()
    conn.close()

    assert not closed_check(recorder.created[0])
    assert pool.stats().in_use == 0
    assert pool.stats().open == 1


def test_the_next_connect_in_the_same_thread_returns_the_same_driver_connection(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as first:
        first_raw = first.__wrapped__
    with pool.connect() as second:
        assert second.__wrapped__ is first_raw
    assert len(recorder.created) == 1


def test_each_thread_gets_its_own_driver_connection(make_pool, recorder):
    pool = make_pool(recorder)
    got = {}

    def use(name: str) -> None:
        with pool.connect() as conn:
            got[name] = conn.__wrapped__

    threads = [threading.Thread(target=use, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    use("main")

    assert len({id(c) for c in got.values()}) == 4
    assert len(recorder.created) == 4


def test_nested_connects_in_one_thread_share_one_connection(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as outer, pool.connect() as inner:
        assert inner.__wrapped__ is outer.__wrapped__
        assert pool.stats().in_use == 1
    assert len(recorder.created) == 1


def test_releasing_a_wrapper_twice_releases_it_once(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    outer = pool.connect()
    inner = pool.connect()

    inner.close()
    inner.close()
    pool.release(inner)
    # The outer checkout is still out: a second release of `inner` must not have ended it.
    assert pool.stats().in_use == 1

    outer.close()
    outer.close()
    assert pool.stats().in_use == 0
    with pool.connect() as again:
        assert again.__wrapped__ is recorder.created[0]


def test_pool_release_of_a_wrapper_releases_it(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    conn = pool.connect()
    pool.release(conn)
    assert pool.stats().in_use == 0
    conn.close()  # and a later close is harmless
    assert pool.stats().in_use == 0


def test_pool_release_of_the_raw_driver_connection_releases_it(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    conn = pool.connect()
    raw = conn.__wrapped__
    pool.release(raw)
    assert pool.stats().in_use == 0
    assert conn.released  # its wrapper no longer reaches the connection
    pool.release(raw)  # a connection the pool handed out: releasing it again is harmless
    assert pool.stats().in_use == 0


def connections_two_threads_hold_at_once(pool):
    """What two threads get from pool.connect() while both hold their checkout."""
    got = {}
    both_hold = threading.Barrier(2, timeout=10)

    def take(name):
        with pool.connect() as conn:
            got[name] = conn.__wrapped__
            both_hold.wait()

    threads = [threading.Thread(target=take, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return got["a"], got["b"]


def test_releasing_the_raw_connection_twice_in_nested_checkouts_ends_the_inner_only(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as outer:
        with pool.connect() as inner:
            raw = inner.__wrapped__
            pool.release(raw)
            pool.release(raw)  # harmless: it must not end the outer checkout too
            assert inner.released
        assert not outer.released
        assert pool.stats().in_use == 1
        assert outer.execute("SELECT 1").fetchone() == (1,)
    assert pool.stats().in_use == 0
    first, second = connections_two_threads_hold_at_once(pool)
    assert first is not second  # it was given back once, so it is nobody else's too


def test_releasing_a_connection_with_conn_injected_leaves_it_to_the_call(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)

    @with_conn(pool=pool)
    def use(conn):
        pool.release(conn)  # does nothing: the call holds it until it returns
        assert pool.stats().in_use == 1
        return conn.execute("SELECT 1").fetchone()

    assert use() == (1,)
    assert pool.stats().in_use == 0
    first, second = connections_two_threads_hold_at_once(pool)
    assert first is not second


def test_read_only_connect_on_a_non_routing_factory_returns_the_same_connection(
    make_pool, pool_cls, recorder
):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as rw, pool.connect(read_only=True) as ro:
        assert ro.__wrapped__ is rw.__wrapped__
    assert len(recorder.created) == 1


def test_an_ordinary_error_in_a_with_block_propagates_and_releases(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pytest.raises(ZeroDivisionError), pool.connect():
        1 / 0  # noqa: B018
    assert pool.stats().in_use == 0
    assert pool.stats().open == 1


def test_session_wrapper_repr_is_the_driver_connections_repr(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as conn:
        assert repr(conn) == repr(recorder.created[0])
