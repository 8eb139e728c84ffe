"""The factories: SQLite, QuasarDB and the adapter for plain callables."""

from __future__ import annotations

import functools
import sqlite3
import threading

import pytest

from qdbpool.factories import CallableFactory, QuasarDB, SQLite, as_factory

SECRET = "pa55-Word-SENTINEL-7f3a"


def _try(fn, *args):
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    return None


def test_sqlite_factory_opens_the_database_at_its_path(tmp_path):
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x)")
        setup.execute("INSERT INTO t VALUES (7)")
    setup.close()

    conn = SQLite(path)()
    try:
        assert type(conn) is sqlite3.Connection
        assert conn.execute("SELECT x FROM t").fetchone() == (7,)
    finally:
        conn.close()


def test_sqlite_factory_defaults_to_connections_usable_from_any_thread(tmp_path):
    conn = SQLite(tmp_path / "db.sqlite")()
    errors: list[BaseException] = []

    def use_elsewhere() -> None:
        try:
            conn.execute("SELECT 1").fetchone()
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=use_elsewhere)
    t.start()
    t.join(30)
    assert errors == []


def test_sqlite_factory_keeps_an_explicit_check_same_thread(tmp_path):
    conn = SQLite(tmp_path / "db.sqlite", check_same_thread=True)()
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.append(_try(conn.execute, "SELECT 1")))
    t.start()
    t.join(30)
    conn.close()
    assert isinstance(errors[0], sqlite3.ProgrammingError)


def test_sqlite_factory_passes_its_keyword_arguments_to_sqlite3_connect(tmp_path):
    conn = SQLite(tmp_path / "db.sqlite", isolation_level=None)()
    try:
        assert conn.isolation_level is None
    finally:
        conn.close()


def test_sqlite_factory_defaults_to_an_in_memory_database():
    conn = SQLite()()
    try:
        assert conn.execute("PRAGMA database_list").fetchone()[2] == ""
    finally:
        conn.close()


def test_quasardb_factory_repr_shows_the_uri_and_hides_every_secret(mocker):
    mocker.patch("quasardb.Cluster")
    factory = QuasarDB(
        "qdb://10.0.0.1:2836",
        user_name="alice",
        user_private_key=SECRET + "-private",
        cluster_public_key=SECRET + "-public",
        user_security_file=f"/etc/{SECRET}.json",
    )
    text = repr(factory)
    assert "qdb://10.0.0.1:2836" in text
    assert "alice" in text
    assert SECRET not in text


def test_callable_factory_repr_shows_only_the_callables_qualified_name():
    def open_db(password: str) -> sqlite3.Connection:
        return sqlite3.connect(":memory:")

    text = repr(CallableFactory(functools.partial(open_db, password=SECRET)))
    assert "open_db" in text
    assert SECRET not in text
    assert "password" not in text


def test_a_plain_callable_is_adapted_by_callable_factory():
    def open_db() -> sqlite3.Connection:
        return sqlite3.connect(":memory:")

    factory = as_factory(open_db)
    assert isinstance(factory, CallableFactory)
    conn = factory()
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()


def test_a_factory_object_is_used_as_it_is():
    factory = SQLite()
    assert as_factory(factory) is factory


@pytest.mark.parametrize("bad", [42, "db.sqlite"])
def test_as_factory_of_a_non_callable_raises_type_error(bad):
    with pytest.raises(TypeError):
        as_factory(bad)
