"""What Postgres(...) refuses when it is made, before any connection: no server needed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdbpool.errors import ConfigurationError
from qdbpool.factories.postgres import Postgres

SECRET = "Zz-hunter2-Secret-Zz"
DSN = "postgresql://app@127.0.0.1:1/app"
DRIVERS = ["psycopg", "psycopg2"]
SECONDS_OPTIONS = ("refresh_delay", "refresh_timeout", "acquire_timeout", "max_replica_lag")


def _everything_said_about(exc: BaseException) -> str:
    return f"{exc}\n{exc!r}\n{exc.args!r}"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("password", [12345, b"secret", 1.5, ["pw"]], ids=repr)
def test_a_password_that_is_not_a_str_is_refused_at_construction(
    password: Any, driver: str
) -> None:
    with pytest.raises(ConfigurationError, match="password must be a str") as err:
        Postgres(DSN, password=password, driver=driver)
    assert "secret" not in _everything_said_about(err.value)


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_unknown_dsn_parameter_is_refused_at_construction_naming_it(driver: str) -> None:
    with pytest.raises(ConfigurationError, match="bogus_option") as err:
        Postgres(f"postgresql://app:{SECRET}@127.0.0.1/app?bogus_option=1", driver=driver)
    assert SECRET not in _everything_said_about(err.value)


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_unknown_keyword_is_refused_at_construction_naming_it(driver: str) -> None:
    with pytest.raises(ConfigurationError, match="bogus_option"):
        Postgres(DSN, bogus_option=1, driver=driver)


@pytest.mark.parametrize(
    ("driver", "keyword", "value"),
    [
        ("psycopg", "autocommit", "false"),  # was taken as true: rollback() undid nothing
        ("psycopg", "autocommit", 0),
        ("psycopg", "prepare_threshold", "x"),  # every host showed as down
        ("psycopg", "prepare_threshold", True),
        ("psycopg", "row_factory", 1),  # a bare TypeError at the first query
        ("psycopg", "cursor_factory", "x"),
        ("psycopg", "context", 1),
        ("psycopg2", "connection_factory", 1),
        ("psycopg2", "cursor_factory", "x"),
    ],
)
def test_a_drivers_own_keyword_of_the_wrong_kind_is_refused_naming_it(
    driver: str, keyword: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=f"{keyword} must be"):
        Postgres(DSN, driver=driver, **{keyword: value})


@pytest.mark.parametrize(
    ("driver", "keyword"),
    [
        ("psycopg", "row_factory"),
        ("psycopg", "cursor_factory"),
        ("psycopg", "context"),
        ("psycopg", "prepare_threshold"),
        ("psycopg2", "connection_factory"),
        ("psycopg2", "cursor_factory"),
    ],
)
def test_none_for_a_drivers_own_keyword_is_its_default(driver: str, keyword: str) -> None:
    # None is what the driver's own connect() takes by default: code that spells the
    # default out, or passes an optional setting through, must keep working.
    Postgres(DSN, driver=driver, **{keyword: None}).close()


@pytest.mark.parametrize(
    ("driver", "query"),
    [
        ("psycopg", "autocommit=false"),
        ("psycopg", "prepare_threshold=0"),
        ("psycopg2", "cursor_factory=x"),
    ],
)
def test_a_drivers_own_keyword_in_the_dsn_is_refused(driver: str, query: str) -> None:
    # A DSN's values are text: "false" made autocommit true.
    keyword = query.partition("=")[0]
    with pytest.raises(ConfigurationError, match=f"{keyword} is not a libpq option") as err:
        Postgres(f"postgresql://app:{SECRET}@127.0.0.1/app?{query}", driver=driver)
    assert SECRET not in _everything_said_about(err.value)


def test_patroni_interval_is_checked_without_patroni_too() -> None:
    with pytest.raises(ConfigurationError, match="patroni_interval"):
        Postgres(DSN, patroni_interval="bad")


def test_an_unknown_driver_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="'psycopg', 'psycopg2'"):
        Postgres(DSN, driver="asyncpg")


def test_pgbouncer_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="pgbouncer"):
        Postgres(DSN, pgbouncer="yes")


def test_pgbouncer_refuses_prepared_statements_with_psycopg() -> None:
    with pytest.raises(ConfigurationError, match="prepare_threshold"):
        Postgres(DSN, pgbouncer=True, prepare_threshold=5)


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_repr_names_the_driver_and_never_the_password(driver: str) -> None:
    factory = Postgres(f"postgresql://app:{SECRET}@127.0.0.1:1/app", driver=driver, pgbouncer=True)
    try:
        assert SECRET not in repr(factory)
        assert ("driver='psycopg2'" in repr(factory)) is (driver == "psycopg2")
        assert "pgbouncer=True" in repr(factory)
    finally:
        factory.close()


@pytest.mark.parametrize("name", SECONDS_OPTIONS)
@given(value=st.one_of(st.integers(), st.just(10**400), st.just(-(10**5000)), st.floats()))
def test_any_number_for_a_seconds_option_is_taken_or_refused_as_configuration(
    name: str, value: float
) -> None:
    try:
        factory = Postgres(DSN, **{name: value})
    except ConfigurationError as exc:
        assert name in str(exc)
    else:
        factory.close()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"balancer": "fastest"}, "balancer"),
        ({"master_as_replica_weight": 1.5}, "master_as_replica_weight"),
        ({"master_as_replica_weight": True}, "master_as_replica_weight"),
        ({"refresh_delay": 0}, "refresh_delay"),
        ({"refresh_timeout": float("inf")}, "refresh_timeout"),
        ({"acquire_timeout": "5"}, "acquire_timeout"),
    ],
    ids=repr,
)
def test_a_routing_option_out_of_range_is_refused_naming_it(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Postgres(DSN, **kwargs)


def test_ready_refuses_a_timeout_too_large_to_wait() -> None:
    factory = Postgres(DSN)
    try:
        with pytest.raises(ConfigurationError, match="timeout"):
            factory.ready(timeout=10**400)
    finally:
        factory.close()
