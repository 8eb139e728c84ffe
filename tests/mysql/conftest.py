"""Fixtures for the MySQL factory suite: real MariaDB servers on 127.0.0.1.

Every server, pool and factory made here is closed when its test (or module) ends, failed or
not. Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pymysql
import pytest

import qdbpool
from qdbpool.factories.mysql import MySQL
from qdbpool.pool import Pool
from qdbpool.testing.availability import require_mariadb
from qdbpool.testing.mariadb import MariaDBReplicaPair, MariaDBServer

T = TypeVar("T", MariaDBServer, MariaDBReplicaPair)

APP_USER = "app"
# Awkward on purpose: URL quoting is exercised wherever the password goes, and it is
# long and distinctive enough that finding it in a message can only mean a leak.
APP_PASSWORD = "Pw/@:%s3cr3t-7xq"
APP_DB = "appdb"


@contextlib.contextmanager
def _with_app_user(kind: type[T]) -> Iterator[T]:
    """A started MariaDBServer or MariaDBReplicaPair with the `app` user and `appdb`."""
    require_mariadb()
    with kind() as target:
        target.create_user(APP_USER, APP_PASSWORD, APP_DB)
        yield target


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    """One server per module; tests must leave it running and its globals as they found
    them."""
    with _with_app_user(MariaDBServer) as srv:
        yield srv


@pytest.fixture
def own_server() -> Iterator[MariaDBServer]:
    """A server this test alone uses: it may change globals (wait_timeout, ...)."""
    with _with_app_user(MariaDBServer) as srv:
        yield srv


@pytest.fixture(scope="module")
def pair() -> Iterator[MariaDBReplicaPair]:
    """A primary and a replica that tests leave in their roles."""
    with _with_app_user(MariaDBReplicaPair) as p:
        yield p


@pytest.fixture
def own_pair() -> Iterator[MariaDBReplicaPair]:
    """A primary and a replica whose roles this test may switch."""
    with _with_app_user(MariaDBReplicaPair) as p:
        yield p


@pytest.fixture
def app_dsn() -> Callable[[Any], str]:
    """The app user's DSN for a server or a cluster (all its hosts, primary first)."""

    def dsn(target: Any) -> str:
        if isinstance(target, MariaDBServer):
            return target.dsn(APP_USER, APP_PASSWORD, APP_DB)
        return str(target.multi_host_dsn(APP_USER, APP_PASSWORD, APP_DB))

    return dsn


@pytest.fixture
def make_factory(
    closing: Callable[[Any], Any], app_dsn: Callable[[Any], str]
) -> Callable[..., MySQL]:
    """MySQL(app DSN of `target`, **kwargs), closed when the test ends."""

    def make(target: Any, **kwargs: Any) -> MySQL:
        factory: MySQL = closing(MySQL(app_dsn(target), **kwargs))
        return factory

    return make


@pytest.fixture
def sessions_of() -> Iterator[Callable[[MariaDBServer], set[int]]]:
    """Connection ids of the app user's sessions on a server, seen from the server side.

    Asked over one root connection per server, kept until the test ends: cheap enough for a
    thread to sample while others work (a new connection each time costs ~20 ms of TLS).
    """
    admins: dict[int, Any] = {}
    lock = threading.Lock()

    def sessions(srv: MariaDBServer) -> set[int]:
        with lock:
            if id(srv) not in admins:
                admins[id(srv)] = srv.connect()
            with admins[id(srv)].cursor() as cur:
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (APP_USER,)
                )
                return {int(row[0]) for row in cur.fetchall()}

    yield sessions
    for admin in admins.values():
        with contextlib.suppress(Exception):
            admin.close()


def _connection_id(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (cid,) = cur.fetchone()
    return int(cid)


@pytest.fixture
def connection_id() -> Callable[[Any], int]:
    """CONNECTION_ID() of a PyMySQL connection, asked over that connection."""
    return _connection_id


@pytest.fixture
def session_id() -> Callable[..., int]:
    """session_id(): CONNECTION_ID() of the session `@with_conn` gives this thread."""
    return qdbpool.with_conn(_connection_id)


@pytest.fixture
def make_global_pool(
    pool_cls: type[Pool],
    make_pool: Callable[..., Any],
    make_factory: Callable[..., MySQL],
) -> Callable[..., Pool]:
    """make_global_pool(target, **kwargs): a pool of each class in turn (`pool_cls`) over
    MySQL(app DSN of `target`), made the global pool; closed when the test ends."""

    def make(target: Any, **kwargs: Any) -> Pool:
        pool: Pool = qdbpool.initialize(
            make_pool(make_factory(target), pool_cls=pool_cls, **kwargs)
        )
        return pool

    return make


@pytest.fixture
def scalar() -> Callable[..., Any]:
    """Run one query on a connection and return the first column of its first row."""

    def run(conn: Any, query: str, params: Any = None) -> Any:
        with conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
        return None if row is None else row[0]

    return run


@pytest.fixture
def lost_errors() -> tuple[type[BaseException], ...]:
    """What a dropped MySQL session looks like to PyMySQL users."""
    return (pymysql.err.OperationalError, pymysql.err.InterfaceError)
