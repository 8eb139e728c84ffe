"""A user's traceback through @with_conn shows the user's error, with no internal exception
as its context (issue 11 §5): no "During handling of the above exception, another exception
occurred" on a thread's first call, on a BoundedPool, with checks configured, or when the
pool is not initialized."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import qdbpool
from qdbpool import BoundedPool, SingletonPool
from qdbpool.factories import SQLite


class UserError(Exception):
    pass


@qdbpool.with_conn
def fails(conn: object) -> None:
    raise UserError("mine")


@qdbpool.with_conn(arg="conn")
def fails_by_keyword(*, conn: object) -> None:
    raise UserError("mine")


class Repo:
    @qdbpool.with_conn
    def fails(self, conn: object) -> None:
        raise UserError("mine")


POOLS: dict[str, Callable[[], qdbpool.Pool]] = {
    "singleton": lambda: SingletonPool(SQLite()),
    "bounded": lambda: BoundedPool(SQLite(), size=2),
    "pre_ping": lambda: SingletonPool(SQLite(), pre_ping=True),
    "max_lifetime": lambda: SingletonPool(SQLite(), max_lifetime=60),
    "max_idle": lambda: SingletonPool(SQLite(), max_idle=60),
    "reset": lambda: SingletonPool(SQLite(), reset=lambda conn: None),
}


@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("call", [fails, fails_by_keyword, lambda: Repo().fails()])
def test_a_users_error_has_no_internal_context_on_the_first_call_or_later(kind, call):
    qdbpool.initialize(POOLS[kind]())
    for _ in range(3):  # a cold thread first, then a warm one
        with pytest.raises(UserError) as caught:
            call()
        assert caught.value.__context__ is None
        assert caught.value.__cause__ is None


def test_pool_not_initialized_has_no_internal_context():
    with pytest.raises(qdbpool.PoolNotInitializedError) as caught:
        fails()
    assert caught.value.__context__ is None
