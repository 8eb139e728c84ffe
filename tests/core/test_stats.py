"""pool.stats(): a frozen snapshot of the pool's counters, the same for both pool classes."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import qdbpool
from qdbpool import PoolStats


def test_stats_of_a_new_pool_are_all_zero(make_pool, pool_cls, recorder):
    assert make_pool(recorder, pool_cls=pool_cls).stats() == PoolStats(
        open=0,
        in_use=0,
        created=0,
        closed=0,
        discarded=0,
        checkouts=0,
        connect_errors=0,
        waiting=0,
        timeouts=0,
    )


def test_stats_is_frozen(make_pool, pool_cls, recorder):
    stats = make_pool(recorder, pool_cls=pool_cls).stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.open = 5  # type: ignore[misc]


def test_stats_is_a_snapshot_that_does_not_change_afterwards(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    before = pool.stats()
    with pool.connect():
        pass
    assert before.created == 0
    assert pool.stats().created == 1


def test_stats_count_open_in_use_and_idle_connections(make_pool, recorder):
    # A SingletonPool's: the other thread keeps its idle connection (a BoundedPool would lend
    # it to this one).
    pool = make_pool(recorder)
    in_thread, finish = threading.Event(), threading.Event()

    def hold_idle() -> None:
        with pool.connect():
            pass
        in_thread.set()
        finish.wait(30)

    t = threading.Thread(target=hold_idle)
    t.start()
    assert in_thread.wait(30)
    try:
        with pool.connect():
            stats = pool.stats()
    finally:
        finish.set()
        t.join(30)

    assert (stats.open, stats.in_use, stats.idle) == (2, 1, 1)


def test_stats_count_checkouts_including_nested_ones(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect(), pool.connect():
        pass
    with pool.connect():
        pass
    assert pool.stats().checkouts == 3
    assert pool.stats().created == 1


def test_stats_count_every_decorated_call_past_the_fast_paths_small_counter(recorder):
    # @with_conn's fast path counts in a small int and moves it aside every 256 calls.
    pool = qdbpool.initialize(recorder)
    try:

        @qdbpool.with_conn
        def use(conn):
            return conn

        for calls in range(1, 1_001):
            use()
            if calls in (255, 256, 257, 512, 1_000):
                assert pool.stats().checkouts == calls
        with pool.connect() as conn:
            conn.__wrapped__.close()  # lost, so retired: its count moves to the pool's
        assert pool.stats().checkouts == 1_001
        assert pool.stats().discarded == 1
    finally:
        qdbpool.close()


def test_stats_count_closed_and_discarded_connections(make_pool, pool_cls, recorder):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pool.connect() as conn:
        conn.__wrapped__.close()  # lost: discarded
    with pool.connect():
        pass
    pool.close()

    stats = pool.stats()
    assert (stats.created, stats.closed, stats.discarded, stats.open) == (2, 2, 1, 0)


def test_stats_count_connect_errors(make_pool, pool_cls):
    def refuse():
        raise ConnectionRefusedError("no server")

    pool = make_pool(refuse, pool_cls=pool_cls)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            pool.connect()
    stats = pool.stats()
    assert (stats.connect_errors, stats.created, stats.open) == (2, 0, 0)


def test_idle_is_open_minus_in_use():
    stats = PoolStats(
        open=5, in_use=2, created=9, closed=4, discarded=1, checkouts=20, connect_errors=0
    )
    assert stats.idle == 3
    assert (stats.waiting, stats.timeouts) == (0, 0)
