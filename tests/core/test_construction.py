"""SingletonPool(...) arguments, and quasardb.Cluster as the default connection maker."""

from __future__ import annotations

import datetime
import math
import threading

import pytest
import quasardb

import qdbpool
from qdbpool.factories import QuasarDB, SQLite

QDB_KWARGS = {
    "uri": "qdb://10.0.0.1:2836",
    "user_name": "alice",
    "user_private_key": "private-key",
    "cluster_public_key": "public-key",
    "timeout": datetime.timedelta(seconds=3),
}


# -------------------------------------------------------------- quasardb.Cluster, mocked


def test_without_get_conn_the_keyword_arguments_go_to_quasardb_cluster_exactly(mocker, make_pool):
    cluster = mocker.patch("quasardb.Cluster")
    pool = make_pool(**QDB_KWARGS)

    with pool.connect() as conn:
        assert conn.__wrapped__ is cluster.return_value

    cluster.assert_called_once_with(**QDB_KWARGS)


def test_initialize_with_keyword_arguments_passes_them_to_quasardb_cluster_exactly(mocker):
    cluster = mocker.patch("quasardb.Cluster")
    qdbpool.initialize(**QDB_KWARGS)

    @qdbpool.with_conn
    def use(conn):
        return conn

    assert use() is cluster.return_value
    cluster.assert_called_once_with(**QDB_KWARGS)


def test_quasardb_factory_passes_uri_and_keyword_arguments_to_quasardb_cluster_exactly(
    mocker, make_pool
):
    cluster = mocker.patch("quasardb.Cluster")
    kwargs = {k: v for k, v in QDB_KWARGS.items() if k != "uri"}
    pool = make_pool(QuasarDB(QDB_KWARGS["uri"], **kwargs))

    with pool.connect() as conn:
        assert conn.__wrapped__ is cluster.return_value

    cluster.assert_called_once_with(**QDB_KWARGS)


def test_quasardb_factory_called_directly_returns_a_new_cluster(mocker):
    cluster = mocker.patch("quasardb.Cluster")
    factory = QuasarDB("qdb://10.0.0.1:2836", user_name="alice")

    assert factory() is cluster.return_value
    cluster.assert_called_once_with(uri="qdb://10.0.0.1:2836", user_name="alice")


def test_each_thread_gets_its_own_quasardb_cluster(mocker, make_pool):
    cluster = mocker.patch("quasardb.Cluster", side_effect=lambda **kw: mocker.Mock())
    pool = make_pool(uri="qdb://10.0.0.1:2836")
    seen = []

    def use() -> None:
        with pool.connect() as conn:
            seen.append(conn.__wrapped__)

    use()
    t = threading.Thread(target=use)
    t.start()
    t.join(timeout=30)

    assert cluster.call_count == 2
    assert seen[0] is not seen[1]


# -------------------------------------------------------------- the real quasardb client


def test_connection_refused_by_the_real_quasardb_client_surfaces_unchanged(make_pool, free_port):
    pool = make_pool(uri=f"qdb://127.0.0.1:{free_port}")

    with pytest.raises(quasardb.Error, match="Connection refused") as info:
        pool.connect()

    assert type(info.value) is quasardb.Error
    assert pool.stats().connect_errors == 1
    assert pool.stats().open == 0


def test_connection_refused_surfaces_unchanged_through_with_conn(free_port):
    qdbpool.initialize(uri=f"qdb://127.0.0.1:{free_port}")

    @qdbpool.with_conn
    def use(conn):
        return conn

    with pytest.raises(quasardb.Error, match="Connection refused"):
        use()


# -------------------------------------------------------------- argument checking (both pools)


def test_get_conn_with_extra_keyword_arguments_raises_type_error(pool_cls, recorder):
    with pytest.raises(TypeError):
        pool_cls(recorder, uri="qdb://127.0.0.1:2836")


@pytest.mark.parametrize("get_conn", ["sqlite.db", 42, object()])
def test_non_callable_get_conn_raises_type_error(pool_cls, get_conn):
    with pytest.raises(TypeError, match="callable"):
        pool_cls(get_conn)


@pytest.mark.parametrize("value", [-1, -0.5, "yes", "1", [1], math.nan])
def test_bad_pre_ping_raises_value_error(pool_cls, recorder, value):
    with pytest.raises(ValueError, match="pre_ping"):
        pool_cls(recorder, pre_ping=value)


@pytest.mark.parametrize("name", ["max_lifetime", "max_idle"])
@pytest.mark.parametrize("value", [0, -1, -0.5, "10", True, [10], math.nan])
def test_bad_max_lifetime_or_max_idle_raises_value_error(pool_cls, recorder, name, value):
    with pytest.raises(ValueError, match=name):
        pool_cls(recorder, **{name: value})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pre_ping": True},
        {"pre_ping": False},
        {"pre_ping": 0},
        {"pre_ping": 2.5},
        {"max_lifetime": 1},
        {"max_lifetime": 0.5},
        {"max_lifetime": None},
        {"max_idle": 30},
        {"max_idle": None},
    ],
)
def test_good_validation_settings_are_accepted(make_pool, pool_cls, recorder, kwargs):
    pool = make_pool(recorder, pool_cls=pool_cls, **kwargs)
    with pool.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_factory_class_instead_of_a_factory_is_refused_naming_it(pool_cls):
    # Callable, it was taken for a function returning connections: the first checkout
    # then failed on the factory it returned, with a raw error.
    with pytest.raises(qdbpool.ArgumentTypeError, match=r"SQLite\(\.\.\.\)"):
        pool_cls(SQLite)
