"""Fixtures for the BoundedPool suite: real sqlite3 connections the tests can inspect, and
a real MariaDB server where the server side matters.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qdbpool
from qdbpool import _global
from qdbpool.factories import SQLite
from qdbpool.testing.availability import require_mariadb
from qdbpool.testing.mariadb import MariaDBServer

APP_USER = "app"
APP_PASSWORD = "bounded-pw"
APP_DB = "appdb"


def is_closed(conn: sqlite3.Connection) -> bool:
    """Whether a real sqlite3 connection has been closed (no I/O, any thread)."""
    try:
        conn.total_changes  # noqa: B018 - raises ProgrammingError once closed
    except sqlite3.ProgrammingError:
        return True
    return False


class RecordingSQLite(SQLite):
    """The SQLite factory, remembering every connection it opened (in order)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.created: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        conn = super().connect(read_only=read_only)
        with self._lock:
            self.created.append(conn)
        return conn

    def open_connections(self) -> list[sqlite3.Connection]:
        with self._lock:
            return [c for c in self.created if not is_closed(c)]


@pytest.fixture(autouse=True)
def no_global_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no global pool; whatever it initialized is closed after it."""
    monkeypatch.setattr(_global, "current", None)
    yield
    pool = _global.current
    if pool is not None:
        pool.close(timeout=0)


@pytest.fixture
def sqlite_factory() -> RecordingSQLite:
    return RecordingSQLite()


@pytest.fixture
def closed_check() -> Callable[[sqlite3.Connection], bool]:
    return is_closed


@pytest.fixture
def make_pool() -> Iterator[Callable[..., qdbpool.BoundedPool]]:
    """BoundedPool(...), closed (without waiting) when the test ends, whatever happens."""
    pools: list[qdbpool.BoundedPool] = []

    def make(*args: Any, **kwargs: Any) -> qdbpool.BoundedPool:
        pool = qdbpool.BoundedPool(*args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        with contextlib.suppress(Exception):
            pool.close(timeout=0)


@pytest.fixture
def threads() -> Iterator[Callable[..., threading.Thread]]:
    """Start a daemon thread that the test must see finish; joined (bounded) at teardown.

    The target's exception, if any, is kept in `thread.error` for the test to check.
    """
    started: list[threading.Thread] = []

    def start(target: Callable[[], object], name: str | None = None) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                thread.error = exc  # type: ignore[attr-defined]

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.error = None  # type: ignore[attr-defined]
        started.append(thread)
        thread.start()
        return thread

    yield start
    for thread in started:
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    require_mariadb()
    with MariaDBServer() as srv:
        srv.create_user(APP_USER, APP_PASSWORD, APP_DB)
        yield srv


@pytest.fixture
def app_dsn(server: MariaDBServer) -> str:
    return server.dsn(APP_USER, APP_PASSWORD, APP_DB)


@pytest.fixture
def app_sessions() -> Callable[[Any], set[int]]:
    """Ids of the app user's sessions, read over an admin connection to the server."""

    def sessions(admin: Any) -> set[int]:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (APP_USER,)
            )
            return {int(row[0]) for row in cur.fetchall()}

    return sessions
