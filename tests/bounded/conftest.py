"""Fixtures of the BoundedPool suite (the shared ones are in tests/conftest.py): pools that
are BoundedPools unless told otherwise, and a real MariaDB server where the server side
matters.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qdbpool
from qdbpool.testing.availability import require_mariadb
from qdbpool.testing.mariadb import MariaDBServer

APP_USER = "app"
APP_PASSWORD = "bounded-pw"
APP_DB = "appdb"


@pytest.fixture
def make_pool(make_pool: Callable[..., Any]) -> Callable[..., qdbpool.BoundedPool]:
    """make_pool(*args, **kwargs): a BoundedPool, closed when the test ends."""
    return functools.partial(make_pool, pool_cls=qdbpool.BoundedPool)


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
