"""Role-aware validation without I/O: a held connection is discarded at its next checkout
when its host changed role or was marked down, and only then."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from qdbpool.ha.hosts import Role


def test_one_lost_session_leaves_other_threads_connections_to_a_healthy_primary_alone(
    shared_cluster: Any, make_pool: Any, hold: Any, status_of: Any, poll: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    primary = shared_cluster.primary
    bystander = hold(pool, read_only=False, checked_out=False)
    assert bystander.wait_opened() == primary.port

    with pool.connect() as conn:
        victim = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    primary.sql("SELECT pg_terminate_backend(%s)", [victim])  # an admin ends one session
    with pytest.raises(psycopg.OperationalError), pool.connect() as conn:
        conn.execute("SELECT 1")
    # The host is checked again and is still the primary: it never changed role, nor was
    # it down.
    poll(lambda: status_of(pool, primary.port).role is Role.PRIMARY, what="primary re-checked")

    port, pid = bystander.check_out_again()
    assert (port, pid) == (primary.port, bystander.pid)
    assert pool.stats().discarded == 1  # the lost connection, and no other
