"""Every error qdbpool raises itself derives from QdbPoolError; argument errors are
ConfigurationErrors (ValueErrors), and those about an argument's kind TypeErrors too."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

import qdbpool
from qdbpool import ArgumentTypeError, BoundedPool, ConfigurationError, QdbPoolError, SingletonPool
from qdbpool.dsn import parse_dsn
from qdbpool.factories import QuasarDB, SQLite


def decorate_with_arg(arg: object) -> Callable[[], object]:
    def go() -> object:
        def f(conn: object) -> None: ...

        return qdbpool.with_conn(arg=arg)(f)  # type: ignore[call-overload]

    return go


BAD_CALLS: dict[str, Callable[[], object]] = {
    "get_conn not callable": lambda: SingletonPool(42),  # type: ignore[arg-type]
    "hook not callable": lambda: SingletonPool(SQLite(), configure=3),  # type: ignore[arg-type]
    "keywords beside get_conn": lambda: SingletonPool(SQLite(), foo=1),
    "size 0": lambda: BoundedPool(SQLite(), size=0),
    "size a bool": lambda: BoundedPool(SQLite(), size=True),
    "max_lifetime 10**400": lambda: SingletonPool(SQLite(), max_lifetime=10**400),
    "max_idle 10**5000": lambda: SingletonPool(SQLite(), max_idle=10**5000),
    "timeout NaN": lambda: BoundedPool(SQLite(), timeout=float("nan")),
    "timeout beyond threading's": lambda: BoundedPool(SQLite(), timeout=1e300),
    "pre_ping a string": lambda: SingletonPool(SQLite(), pre_ping="yes"),  # type: ignore[arg-type]
    "with_conn arg a float": decorate_with_arg(1.5),
    "with_conn arg not a parameter": decorate_with_arg("nope"),
    "with_conn read_only not a bool": lambda: qdbpool.with_conn(read_only=1),  # type: ignore[call-overload]
    "SQLite path an int": lambda: SQLite(3),  # type: ignore[arg-type]
    "QuasarDB uri an int": lambda: QuasarDB(uri=3),  # type: ignore[arg-type]
    "DSN an int": lambda: parse_dsn(3),  # type: ignore[arg-type]
    "DSN malformed": lambda: parse_dsn("postgresql://db1:port/app"),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_raise_a_configuration_error(call: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        call()
    assert isinstance(caught.value, QdbPoolError)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "call",
    [BAD_CALLS["get_conn not callable"], BAD_CALLS["SQLite path an int"]],
    ids=["get_conn", "SQLite path"],
)
def test_an_argument_of_the_wrong_kind_is_also_a_type_error(call: Callable[[], object]) -> None:
    with pytest.raises(ArgumentTypeError) as caught:
        call()
    assert isinstance(caught.value, TypeError)


def test_misusing_a_pooled_connection_raises_qdbpool_errors(
    make_pool: Callable[..., qdbpool.Pool], pool_cls: type[qdbpool.Pool]
) -> None:
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    other = make_pool(SQLite(), pool_cls=pool_cls)
    with pool.connect() as conn:
        with pytest.raises(QdbPoolError):
            pickle.dumps(conn)
        with pytest.raises(QdbPoolError):
            other.release(conn)
        with pytest.raises(QdbPoolError):
            pool.release(object())
    with pytest.raises(QdbPoolError):
        conn.execute("SELECT 1")


def test_postgres_refuses_a_password_that_is_not_text() -> None:
    from qdbpool.factories import Postgres  # psycopg is a dev dependency: always there

    for password in (12345, b"secret"):
        with pytest.raises(ConfigurationError) as caught:
            Postgres("postgresql://app@127.0.0.1:1/app", password=password)
        assert "secret" not in str(caught.value)
