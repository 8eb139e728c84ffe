"""Secrets given to factories never leak; qdbpool logs through one logger, quietly."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading

import pytest

import qdbpool
from qdbpool import PoolClosedError, SingletonPool, with_conn
from qdbpool.factories import QuasarDB, SQLite

SECRET = "pa55-Word-SENTINEL-7f3a"
# sqlite3.connect takes no password: a distinctive number stands in for the secret kwarg.
SECRET_NUMBER = 31337.4242
QDBPOOL_DIR = os.path.dirname(qdbpool.__file__)


def open_with_password(password: str) -> sqlite3.Connection:
    assert password == SECRET
    return sqlite3.connect(":memory:", check_same_thread=False)


def quasardb_factory(mocker, tmp_path):
    def cluster(**kwargs):
        conn = mocker.Mock(name="cluster")
        conn.is_open.return_value = True
        conn.close.side_effect = lambda: setattr(conn.is_open, "return_value", False)
        return conn

    mocker.patch("quasardb.Cluster", side_effect=cluster)
    factory = QuasarDB(
        "qdb://10.0.0.1:2836",
        user_name="alice",
        user_private_key=SECRET,
        cluster_public_key=SECRET + "-public",
        user_security_file=f"/secure/{SECRET}.json",
    )
    return factory, SECRET


def partial_factory(mocker, tmp_path):
    return functools.partial(open_with_password, password=SECRET), SECRET


def sqlite_factory(mocker, tmp_path):
    return SQLite(tmp_path / "db.sqlite", timeout=SECRET_NUMBER), str(SECRET_NUMBER)


FACTORIES = [quasardb_factory, partial_factory, sqlite_factory]


def full_cycle(get_conn) -> tuple[list[str], list[BaseException]]:
    """Create, use, fail, discard, end a thread, close; returns reprs and qdbpool's errors."""
    reprs: list[str] = []
    errors: list[BaseException] = []
    pool = qdbpool.initialize(get_conn, pre_ping=True, reset=lambda conn: None)
    reprs += [repr(pool), repr(pool.factory), str(pool)]

    @with_conn
    def use(conn):
        return conn

    @with_conn
    def lose(conn):
        raise ConnectionError("link down")

    use()
    with pool.connect() as wrapper:
        reprs += [repr(wrapper), str(wrapper)]
    with pytest.raises(ConnectionError):
        lose()  # discarded
    use()  # a new one
    t = threading.Thread(target=use)
    t.start()
    t.join(30)  # closed at the end of its thread
    reprs += [repr(pool.stats())]

    try:
        SingletonPool(get_conn, password=SECRET, user_private_key=SECRET)
    except TypeError as exc:
        errors.append(exc)
    qdbpool.close()
    reprs += [repr(pool), repr(pool.stats())]
    try:
        pool.connect()
    except PoolClosedError as exc:
        errors.append(exc)
    try:
        use()
    except PoolClosedError as exc:
        errors.append(exc)
    return reprs, errors


@pytest.mark.parametrize("make_factory", FACTORIES)
def test_a_secret_given_to_a_factory_never_appears_in_logs(make_factory, mocker, tmp_path, caplog):
    get_conn, secret = make_factory(mocker, tmp_path)
    caplog.set_level(logging.DEBUG, logger="qdbpool")

    full_cycle(get_conn)

    assert caplog.records  # the cycle was logged at all
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(record.args)


@pytest.mark.parametrize("make_factory", FACTORIES)
def test_a_secret_given_to_a_factory_never_appears_in_a_repr(make_factory, mocker, tmp_path):
    get_conn, secret = make_factory(mocker, tmp_path)
    reprs, _ = full_cycle(get_conn)
    assert len(reprs) == 8
    for text in reprs:
        assert secret not in text


@pytest.mark.parametrize("make_factory", FACTORIES)
def test_a_secret_given_to_a_factory_never_appears_in_qdbpools_errors(
    make_factory, mocker, tmp_path
):
    get_conn, secret = make_factory(mocker, tmp_path)
    _, errors = full_cycle(get_conn)
    assert isinstance(errors[0], TypeError)  # the stray keyword argument
    assert [type(e) for e in errors[1:]] == [PoolClosedError, PoolClosedError]
    for exc in errors:
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert SECRET not in str(exc)  # the secret passed as a stray keyword argument


def test_everything_qdbpool_logs_goes_through_the_one_qdbpool_logger(mocker, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    full_cycle(partial_factory(mocker, tmp_path)[0])

    ours = [r for r in caplog.records if r.pathname.startswith(QDBPOOL_DIR)]
    assert ours
    assert {r.name for r in ours} == {"qdbpool"}


def test_a_full_connection_cycle_logs_nothing_above_debug(mocker, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="qdbpool")
    full_cycle(partial_factory(mocker, tmp_path)[0])
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []


@pytest.mark.parametrize(
    "options", [{}, {"pre_ping": True, "max_idle": 60, "reset": lambda conn: None}]
)
def test_the_hot_path_logs_nothing_above_debug(recorder, caplog, options):
    pool = qdbpool.initialize(recorder, **options)

    @with_conn
    def inner(conn):
        return conn.execute("SELECT 1").fetchone()

    @with_conn
    def outer(conn):
        return inner()

    @with_conn
    def fail(conn):
        raise ValueError("an ordinary error")

    outer()  # opened: not the hot path
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    for _ in range(50):
        assert outer() == (1,)
        with pool.connect() as conn:
            conn.execute("SELECT 1")
        with pytest.raises(ValueError):
            fail()

    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert len(recorder.created) == 1
