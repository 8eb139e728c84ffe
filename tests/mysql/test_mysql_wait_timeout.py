"""Sessions the server ends for idleness (wait_timeout) never reach user code.

The server's wait_timeout is 1 s here, set before any pool opens a connection (sessions
copy it when they connect). Each test uses a connection, watches the server's processlist
until that session is gone, and calls again: with pre_ping, or with max_idle or
max_lifetime below wait_timeout, the call succeeds on a new session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qdbpool
from qdbpool.pool import Pool
from qdbpool.testing._process import wait_until
from qdbpool.testing.mariadb import MariaDBServer

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(60)]

WAIT_TIMEOUT = 1  # seconds


@pytest.fixture(scope="module")
def impatient_server(server: MariaDBServer) -> Iterator[MariaDBServer]:
    """The module's server with wait_timeout = 1 s for every session opened from now on."""
    previous = server.get_global("wait_timeout")
    server.set_global("wait_timeout", WAIT_TIMEOUT)
    yield server
    server.set_global("wait_timeout", previous)


@qdbpool.with_conn
def session_wait_timeout(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@SESSION.wait_timeout")
        (value,) = cur.fetchone()
    return int(value)


def _wait_until_server_dropped(server: MariaDBServer, cid: int) -> None:
    """Watch from the server side (using the session itself would keep it alive)."""

    def gone() -> bool:
        query = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s"
        return server.sql(query, (cid,)) == [(0,)]

    wait_until(gone, timeout=WAIT_TIMEOUT + 10, interval=0.05, what=f"session {cid} dropped")


@pytest.mark.parametrize(
    "limits",
    [
        {"pre_ping": True},
        {"max_idle": WAIT_TIMEOUT / 2},
        {"max_lifetime": WAIT_TIMEOUT / 2},
    ],
    ids=["pre_ping", "max_idle", "max_lifetime"],
)
def test_session_ended_by_wait_timeout_is_replaced_before_use(
    impatient_server: MariaDBServer,
    make_global_pool: Callable[..., Pool],
    limits: dict[str, Any],
    session_id: Callable[..., int],
) -> None:
    pool = make_global_pool(impatient_server, **limits)
    assert session_wait_timeout() == WAIT_TIMEOUT  # the pool's sessions really have it
    expired = session_id()
    _wait_until_server_dropped(impatient_server, expired)

    fresh = session_id()  # must not raise "MySQL server has gone away"

    assert fresh != expired
    assert pool.stats().discarded >= 1
