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
