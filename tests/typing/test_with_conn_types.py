"""What type checkers see of @with_conn, checked by `mypy --strict tests/typing` (make lint).

The positional form drops the injected connection from the signature and checks the rest.
Each call in `_calls_a_type_checker_must_reject` carries the one error code mypy must report
for it: with `warn_unused_ignores` (part of --strict) an error that stops being reported
turns into an "unused type: ignore" error, so lint fails either way. The tests below run the
well-typed calls for real, over SQLite, so that the types describe what happens at run time.
"""

from __future__ import annotations

import sqlite3
import sys

import pytest

import qdbpool
from qdbpool.factories import SQLite

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # mypy checks as Python 3.10, the oldest we support
    from typing_extensions import assert_type


@qdbpool.with_conn
def load(conn: sqlite3.Connection, table: str, limit: int = 10) -> list[str]:
    rows = conn.execute(f"SELECT name FROM {table} ORDER BY name LIMIT ?", (limit,))
    return [str(row[0]) for row in rows]


@qdbpool.with_conn()
def count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@qdbpool.with_conn(read_only=True)
def first(conn: sqlite3.Connection, table: str) -> str | None:
    row = conn.execute(f"SELECT min(name) FROM {table}").fetchone()
    return None if row[0] is None else str(row[0])


@qdbpool.with_conn(pool="named")
def count_in_named(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@qdbpool.with_conn(arg="conn")
def by_keyword(table: str, *, conn: sqlite3.Connection | None = None) -> int:
    # Another `arg` keeps the signature as written: the parameter needs a default.
    assert conn is not None
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


class Repo:
    def __init__(self, table: str) -> None:
        self.table = table

    @qdbpool.with_conn()
    def names(self, conn: sqlite3.Connection, limit: int) -> list[str]:
        rows = conn.execute(f"SELECT name FROM {self.table} ORDER BY name LIMIT ?", (limit,))
        return [str(row[0]) for row in rows]

    @staticmethod
    @qdbpool.with_conn
    def total(conn: sqlite3.Connection, table: str) -> int:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _calls_a_type_checker_must_reject() -> None:
    """Never called: each line is a call mypy must flag with exactly the code it ignores."""
    load()  # type: ignore[call-arg]
    load(42)  # type: ignore[arg-type]
    load("users", limit="3")  # type: ignore[arg-type]
    load("users", 3, "extra")  # type: ignore[call-arg]
    load("users", size=3)  # type: ignore[call-arg]
    flag: bool = count("users")  # type: ignore[assignment]
    first(table=1)  # type: ignore[arg-type]
    by_keyword(1)  # type: ignore[arg-type]
    Repo("users").names("3")  # type: ignore[arg-type]
    Repo("users").names(3, 4)  # type: ignore[call-arg]
    text: str = Repo("users").names(3)  # type: ignore[assignment]
    Repo.total(1)  # type: ignore[arg-type]
    del flag, text


@pytest.fixture
def users(tmp_path: pytest.TempPathFactory) -> str:
    """A table `users` in the global pool's database (closed by tests/conftest.py)."""
    path = str(tmp_path / "typing.sqlite3")  # type: ignore[operator]
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE users (name TEXT)")
        setup.executemany("INSERT INTO users VALUES (?)", [("ann",), ("bob",), ("cy",)])
    setup.close()
    qdbpool.initialize(SQLite(path))
    qdbpool.initialize(SQLite(path), name="named")
    return "users"


def test_the_positional_form_takes_every_argument_but_the_connection(users: str) -> None:
    assert assert_type(load(users), list[str]) == ["ann", "bob", "cy"]
    assert assert_type(load(users, limit=2), list[str]) == ["ann", "bob"]
    assert assert_type(load(table=users), list[str]) == ["ann", "bob", "cy"]
    assert assert_type(count(users), int) == 3
    assert assert_type(first(users), str | None) == "ann"
    assert assert_type(count_in_named(users), int) == 3  # a named pool types the same


def test_methods_drop_self_and_the_connection(users: str) -> None:
    assert assert_type(Repo(users).names(2), list[str]) == ["ann", "bob"]
    assert assert_type(Repo(users).names(limit=1), list[str]) == ["ann"]
    assert assert_type(Repo.total(users), int) == 3


def test_another_arg_keeps_the_signature_as_written(users: str) -> None:
    assert assert_type(by_keyword(users), int) == 3
