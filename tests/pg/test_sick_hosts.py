"""A host that accepts connections but fails every check gets a few checks a second, not a
connection storm, and is used again as soon as it answers (issue 11 §2)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from qdbpool.cluster import Role
from qdbpool.errors import NoHostAvailableError
from qdbpool.testing.proxy import FaultProxy

# The role query calls pg_is_in_recovery() unqualified: with `sick` before pg_catalog on
# the role's search_path, the check runs this one and fails, while logins still succeed.
_MAKE_CHECKS_FAIL = [
    "CREATE SCHEMA sick",
    "CREATE FUNCTION sick.pg_is_in_recovery() RETURNS boolean LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000', MESSAGE = 'made to fail by the test';"
    " END $$",
    "GRANT USAGE ON SCHEMA sick TO PUBLIC",
    "ALTER ROLE app SET search_path = sick, pg_catalog",
]


def _sessions(node: Any) -> int:
    """Sessions the server has seen end in the app's database (pg_stat_database)."""
    rows = node.sql("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    return int(rows[0][0])


def test_a_host_failing_every_check_gets_few_connections_and_is_used_once_healed(
    make_cluster: Callable[..., Any], password: str, poll: Callable[..., Any], pg: Any
) -> None:
    cluster = make_cluster(standbys=0, user="app", password=password, dbname="app")
    primary = cluster.primary
    for statement in _MAKE_CHECKS_FAIL:
        primary.sql(statement)
    factory = pg.factory(primary.dsn(), acquire_timeout=3.0)
    try:
        before = _sessions(primary)
        started = time.monotonic()
        # A caller waiting for the primary makes the monitor's rounds go back to back.
        with pytest.raises(NoHostAvailableError, match="made to fail"):
            factory.connect()
        waited = time.monotonic() - started
        assert factory.hosts()[0].role is Role.DOWN
        opened = _sessions(primary) - before - 1  # less the count query's own session
        # Back-off from 50 ms doubling to 1 s: about 8 checks in 3 s (before: hundreds).
        assert opened <= 15, f"{opened} connections in {waited:.1f}s to a failing host"

        primary.sql("ALTER ROLE app RESET search_path")  # healed
        healed = time.monotonic()
        box: dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: box.update(conn=factory.connect()))
        waiter.start()
        waiter.join(timeout=10)
        assert "conn" in box, "no connection once the host answered its checks again"
        # At most one back-off step (1 s) after healing, and the connect itself.
        assert time.monotonic() - healed < 2.5
        factory.close_connection(box["conn"])
    finally:
        factory.close()


def test_a_host_answering_its_checks_but_refusing_new_sessions_gets_few_attempts(
    make_cluster: Callable[..., Any], password: str, closing: Callable[[Any], Any], pg: Any
) -> None:
    # The monitor's own session answers every check, so only the failed opens tell that the
    # server refuses new sessions (its connection limit reached). Each failed open made the
    # host suspect, a check cleared it at once, and the caller tried again: 370 attempts in
    # 3 s from one caller. Now opens back off as failed checks do.
    cluster = make_cluster(standbys=0, user="app", password=password, dbname="app")
    primary = cluster.primary
    proxy = closing(FaultProxy(primary.host, primary.port))
    dsn = primary.dsn().replace(f":{primary.port}/", f":{proxy.port}/")
    assert str(proxy.port) in dsn
    factory = closing(pg.factory(dsn, acquire_timeout=3.0))
    factory.ready(masters_count=1, timeout=10)  # the monitor's session is open
    primary.sql("ALTER ROLE app CONNECTION LIMIT 1")  # ... and holds the only slot
    before = proxy.accepted
    with pytest.raises(NoHostAvailableError, match="too many connections"):
        factory.connect()
    attempts = proxy.accepted - before
    # Back-off from 50 ms doubling to 1 s: about 8 attempts in 3 s.
    assert attempts <= 15, f"{attempts} connection attempts in 3 s"
    assert factory.hosts()[0].role is Role.PRIMARY  # its checks still pass

    primary.sql("ALTER ROLE app CONNECTION LIMIT -1")
    lifted = time.monotonic()
    factory.close_connection(factory.connect())  # at most one back-off step (1 s) later
    assert time.monotonic() - lifted < 2.5
