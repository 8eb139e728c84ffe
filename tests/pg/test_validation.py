"""Role-aware validation without I/O: a held connection is discarded at its next checkout
when its host changed role or was marked down, and only then."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import qdbpool
from qdbpool.cluster import Role


def test_one_lost_session_leaves_other_threads_connections_to_a_healthy_primary_alone(
    shared_cluster: Any, make_pool: Any, hold: Any, status_of: Any, poll: Any, pg: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    primary = shared_cluster.primary
    bystander = hold(pool, read_only=False, checked_out=False)
    assert bystander.wait_opened() == primary.port

    with pool.connect() as conn:
        victim = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    primary.sql("SELECT pg_terminate_backend(%s)", [victim])  # an admin ends one session
    with pytest.raises(pg.module.OperationalError), pool.connect() as conn:
        conn.execute("SELECT 1")
    # The host is checked again and is still the primary: it never changed role, nor was
    # it down.
    poll(lambda: status_of(pool, primary.port).role is Role.PRIMARY, what="primary re-checked")

    port, pid = bystander.check_out_again()
    assert (port, pid) == (primary.port, bystander.pid)
    assert pool.stats().discarded == 1  # the lost connection, and no other


@pytest.mark.parametrize("ending", ["transaction open", "transaction failed", "closed"])
def test_a_warm_threads_call_leaves_no_transaction_open_and_no_closed_connection_behind(
    shared_cluster: Any, make_pool: Any, poll: Any, ending: str, pg: Any
) -> None:
    # A warm thread's call takes @with_conn's fast path, which trusts the factory's one
    # no-I/O look at libpq's transaction status (after_use_hint) to say the session is idle.
    pool = qdbpool.initialize(make_pool(shared_cluster.primary.dsn()))  # autocommit off
    primary = shared_cluster.primary

    @qdbpool.with_conn()
    def use(conn: Any, ending: str) -> int:
        pid: int = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # opens a transaction
        if ending == "transaction failed":
            with contextlib.suppress(pg.module.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
        elif ending == "closed":
            conn.close()
        return pid

    first = use("transaction open")  # opens the connection: the pool's full path
    assert primary.sql("SELECT state FROM pg_stat_activity WHERE pid = %s", [first]) == [("idle",)]
    assert use(ending) == first  # the fast path
    if ending == "closed":
        assert use("transaction open") != first  # a new connection, not the closed one
        assert pool.stats().discarded == 1
        poll(
            lambda: not primary.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [first]),
            what="the closed session to end",
        )
    else:
        # Rolled back: the session is idle, and the thread keeps its connection.
        assert primary.sql("SELECT state FROM pg_stat_activity WHERE pid = %s", [first]) == [
            ("idle",)
        ]
        assert use("transaction open") == first
        assert pool.stats().discarded == 0
