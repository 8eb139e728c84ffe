"""Several pools in one process: named global pools and `@with_conn(pool=...)`.

Two SQLite databases stand for two servers: a connection's database file tells which pool
it came from. The same with a real PostgreSQL cluster is in tests/pg/test_named_pools.py.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path

import pytest

import qdbpool as pool
from qdbpool import ArgumentTypeError, BoundedPool, PoolClosedError, PoolNotInitializedError
from qdbpool.factories import SQLite

JOIN = 30.0


def database_of(conn: sqlite3.Connection) -> str:
    """The file name of the main database of a sqlite3 connection."""
    return Path(conn.execute("PRAGMA database_list").fetchone()[2]).name


@pytest.fixture
def two_pools(tmp_path: Path, pool_cls: type[pool.Pool]) -> None:
    """The default global pool on orders.db, a pool named "ts" on ts.db."""
    pool.initialize(pool_cls(SQLite(str(tmp_path / "orders.db"))))
    pool.initialize(pool_cls(SQLite(str(tmp_path / "ts.db"))), name="ts")


@pool.with_conn()
def orders(conn: sqlite3.Connection) -> tuple[str, int]:
    return database_of(conn), id(conn)


@pool.with_conn(pool="ts")
def series(conn: sqlite3.Connection) -> tuple[str, int]:
    return database_of(conn), id(conn)


@pool.with_conn(pool="ts")
def series_calling_orders(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return [(database_of(conn), id(conn)), orders(), series(), (database_of(conn), id(conn))]


@pool.with_conn()
def orders_calling_series(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return [(database_of(conn), id(conn)), series(), orders(), series_calling_orders()[1]]


@pytest.mark.usefixtures("two_pools")
def test_each_function_gets_its_own_pools_connection_and_nesting_shares_within_a_pool() -> None:
    outer, inner_ts, inner_orders, deeper = orders_calling_series()
    assert outer[0] == inner_orders[0] == deeper[0] == "orders.db"
    assert inner_ts[0] == "ts.db"
    assert outer[1] == inner_orders[1] == deeper[1]  # nested within the default pool: shared
    first, via_orders, via_series, last = series_calling_orders()
    assert first == via_series == last
    assert first[0] == "ts.db" and via_orders[0] == "orders.db"


@pytest.mark.usefixtures("two_pools")
def test_threads_get_a_connection_per_pool_each_and_give_them_back() -> None:
    seen: list[list[tuple[str, int]]] = []
    barrier = threading.Barrier(8, timeout=JOIN)

    def work() -> None:
        barrier.wait()  # all 8 alive at once: ids of live connections cannot repeat
        result = orders_calling_series()
        seen.append(result)
        barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    assert len(seen) == 8
    default, ts = pool.instance(), pool.instance("ts")
    for p, ids in ((default, {r[0][1] for r in seen}), (ts, {r[1][1] for r in seen})):
        if isinstance(p, BoundedPool):
            assert len(ids) <= p.max_size  # shared between the threads, one at a time
        else:
            assert len(ids) == 8  # a connection per thread
    for outer, _, inner, deeper in seen:  # within a pool, nested calls shared one
        assert outer == inner == deeper
    assert default.stats().in_use == ts.stats().in_use == 0


def test_a_name_is_looked_up_at_each_call_so_it_may_be_initialized_later(tmp_path: Path) -> None:
    with pytest.raises(PoolNotInitializedError, match=r"'ts' is not initialized.*name='ts'"):
        series()
    pool.initialize(SQLite(str(tmp_path / "ts.db")), name="ts")
    assert series()[0] == "ts.db"
    with pytest.raises(PoolNotInitializedError, match="global connection pool"):
        orders()  # the default pool is another one, still not initialized


def test_a_pool_object_can_be_given_instead_of_a_name(tmp_path: Path) -> None:
    own = BoundedPool(SQLite(str(tmp_path / "own.db")), size=1, max_size=1)
    try:

        @pool.with_conn(pool=own)
        def where(conn: sqlite3.Connection) -> str:
            return database_of(conn)

        assert where() == "own.db"
        assert own.stats().checkouts == 1
    finally:
        own.close()


def test_reinitializing_a_name_closes_the_pool_it_replaces_and_leaves_the_others(
    tmp_path: Path,
) -> None:
    default = pool.initialize(SQLite(str(tmp_path / "orders.db")))
    first = pool.initialize(SQLite(str(tmp_path / "ts.db")), name="ts")
    assert series()[0] == "ts.db"
    second = pool.initialize(SQLite(str(tmp_path / "ts2.db")), name="ts")
    assert pool.instance("ts") is second
    assert series()[0] == "ts2.db"
    with pytest.raises(PoolClosedError):
        first.connect()
    pool.close("ts")
    with pytest.raises(PoolClosedError):
        series()  # instance("ts") is still that pool, closed: no surprise new pool
    assert orders()[0] == "orders.db"  # the default pool was left alone
    assert pool.instance() is default


def test_replacing_a_pool_under_one_name_leaves_it_open_where_it_is_still_registered(
    tmp_path: Path,
) -> None:
    # One pool under two names (an alias while code moves from the default pool to a
    # named one): replacing it under one of them must not close it under the other.
    shared = pool.initialize(SQLite(str(tmp_path / "orders.db")))
    pool.initialize(shared, name="ts")
    pool.initialize(SQLite(str(tmp_path / "ts2.db")), name="ts")
    assert orders()[0] == "orders.db"
    assert series()[0] == "ts2.db"
    # Replaced where it was last registered, it is closed as any replaced pool is.
    pool.initialize(SQLite(str(tmp_path / "orders2.db")))
    with pytest.raises(PoolClosedError):
        shared.connect()


def test_a_caller_passed_connection_is_told_by_the_named_pools_connection_type(
    tmp_path: Path,
) -> None:
    pool.initialize(SQLite(str(tmp_path / "ts.db")), name="ts")

    @pool.with_conn(pool="ts")
    def label(conn: sqlite3.Connection, suffix: str = "") -> str:
        return database_of(conn) + suffix

    own = sqlite3.connect(str(tmp_path / "mine.db"))
    try:
        assert label("!") == "ts.db!"  # not a connection: the next argument
        # The pool has made a connection of that type by now: the caller's own is taken.
        assert label(own) == "mine.db"
    finally:
        own.close()


@pytest.mark.parametrize("bad", ["", 3, b"ts"])
def test_a_bad_pool_or_name_is_refused_with_a_clear_error(bad: object) -> None:
    with pytest.raises(ArgumentTypeError, match=re.escape("with_conn(pool=...)")):
        pool.with_conn(pool=bad)  # type: ignore[call-overload]
    with pytest.raises(ArgumentTypeError, match="non-empty str"):
        pool.initialize(lambda: sqlite3.connect(":memory:"), name=bad)  # type: ignore[arg-type]


def test_interpreter_exit_closes_the_named_pools_too(tmp_path: Path) -> None:
    from qdbpool import _global

    default = pool.initialize(SQLite(str(tmp_path / "orders.db")))
    named = pool.initialize(SQLite(str(tmp_path / "ts.db")), name="ts")
    _global._close_at_exit()
    for closed in (default, named):
        with pytest.raises(PoolClosedError):
            closed.connect()
