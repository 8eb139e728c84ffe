"""Postgres(dsn, pgbouncer=True) through real PgBouncers in transaction pooling mode, one in
front of each node of a real cluster: more client threads than server connections, no
errors, and reads and writes still routed by the role checks passing through PgBouncer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import qdbpool
from qdbpool.cluster import Role
from qdbpool.testing.postgres import PostgresCluster

pgbouncer = pytest.importorskip("qdbpool.testing.pgbouncer")

CLIENTS = 8  # threads, each with its own client connection to each PgBouncer
SERVER_CONNECTIONS = 2  # PgBouncer's pool_size, per node
ROUNDS = 40  # checkouts per client thread, alternately to the primary and a replica
STATEMENTS = 8  # per checkout: psycopg 3 prepares a statement run 5 times on a connection
JOIN = 120.0


@pytest.fixture(scope="module")
def bouncers(module_cluster: PostgresCluster) -> Iterator[list[Any]]:
    """A PgBouncer (transaction pooling, pool_size 2) in front of the primary and of one
    standby."""
    try:
        pgbouncer.find_pgbouncer()
    except pgbouncer.ServerUnavailable as exc:
        from qdbpool.testing.availability import require_postgres

        require_postgres()  # skips, or fails under CI, the same way
        pytest.skip(str(exc))
    nodes = [module_cluster.primary, module_cluster.standbys[0]]
    started: list[Any] = []
    try:
        for node in nodes:
            bouncer = pgbouncer.PgBouncer(
                module_cluster, node, pool_mode="transaction", pool_size=SERVER_CONNECTIONS
            )
            started.append(bouncer.start())
        yield started
    finally:
        for bouncer in started:
            bouncer.close()


@pytest.fixture
def bounced_dsn(
    module_cluster: PostgresCluster, bouncers: list[Any], url_for: Callable[..., str]
) -> str:
    """A multi-host DSN whose hosts are the PgBouncers."""
    return url_for(module_cluster, [(b.host, b.port) for b in bouncers])


def _run_clients(pool: Any) -> tuple[int, list[BaseException]]:
    """CLIENTS threads, ROUNDS checkouts each, STATEMENTS statements per checkout: the
    number of statements that succeeded, and every error."""
    errors: list[BaseException] = []
    succeeded = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS, timeout=30)

    def client(number: int) -> None:
        barrier.wait()
        for n in range(ROUNDS):
            read_only = n % 2 == 1
            try:
                with pool.connect(read_only=read_only) as conn:
                    for i in range(STATEMENTS):
                        row = conn.execute(
                            "SELECT %s::int + 1, pg_is_in_recovery()", [number * 1000 + i]
                        ).fetchone()
                        assert tuple(row) == (number * 1000 + i + 1, read_only), row
                        with lock:
                            succeeded[0] += 1
                    conn.commit()
            except Exception as exc:
                with lock:
                    errors.append(exc)

    threads = [
        threading.Thread(target=client, args=(i,), name=f"bounced-{i}") for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    return succeeded[0], errors


def test_many_threads_through_pgbouncer_in_transaction_mode_see_no_error(
    bounced_dsn: str, bouncers: list[Any], make_pool: Callable[..., Any], status_of: Any
) -> None:
    # The role checks run every 50 ms through PgBouncer meanwhile: they must keep reading
    # each host's role right (a prepared role query would fail there too).
    pool = make_pool(bounced_dsn, pgbouncer=True, refresh_delay=0.05)
    pool.factory.ready(1, 1, timeout=10)

    succeeded, errors = _run_clients(pool)

    assert errors == []
    assert succeeded == CLIENTS * ROUNDS * STATEMENTS
    primary, replica = bouncers
    assert status_of(pool, primary.port).role is Role.PRIMARY
    assert status_of(pool, replica.port).role is Role.REPLICA
    assert all(status.error is None for status in pool.factory.hosts())
    # More clients than server sessions: PgBouncer shared them.
    assert pool.stats().created >= 2 * CLIENTS > 2 * SERVER_CONNECTIONS


# psycopg 3 only: psycopg2 prepares nothing by itself, so nothing breaks without the option.
@pytest.mark.parametrize("pg", ["psycopg"], indirect=True)
def test_without_the_option_psycopg_fails_through_pgbouncer_in_transaction_mode(
    bounced_dsn: str, make_pool: Callable[..., Any], pg: Any
) -> None:
    # The proof that the test above can fail: psycopg 3 prepares a statement on the server
    # session it happens to have, and the next transaction runs on another one.
    pool = make_pool(bounced_dsn, refresh_delay=0.05)
    pool.factory.ready(1, 1, timeout=10)

    succeeded, errors = _run_clients(pool)

    assert errors, "psycopg's prepared statements went through PgBouncer unharmed"
    assert any("prepared statement" in str(exc) for exc in errors), errors[:3]
    assert succeeded < CLIENTS * ROUNDS * STATEMENTS


def test_a_decorated_function_through_pgbouncer_commits_in_transaction_mode(
    bounced_dsn: str, make_pool: Callable[..., Any], module_cluster: PostgresCluster
) -> None:
    # Writes through PgBouncer are committed, and the session carries nothing between
    # transactions: each call states what it needs (here, in its own transaction).
    qdbpool.initialize(make_pool(bounced_dsn, pgbouncer=True))
    module_cluster.primary.sql("CREATE TABLE IF NOT EXISTS bounced (n int)")
    module_cluster.primary.sql("GRANT ALL ON bounced TO app")

    @qdbpool.with_conn()
    def add(conn: Any, n: int) -> None:
        conn.execute("SET LOCAL statement_timeout = '5s'")  # one transaction's setting
        conn.execute("INSERT INTO bounced VALUES (%s)", [n])
        conn.commit()

    for n in range(20):
        add(n)
    total = module_cluster.primary.sql("SELECT count(*), sum(n) FROM bounced")
    assert total == [(20, sum(range(20)))]
    module_cluster.primary.sql("DROP TABLE bounced")


SLEEP = "SELECT pg_sleep(30) /* qdbpool through PgBouncer */"


def _sleeping(node: Any) -> int:
    rows = node.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s", [SLEEP]
    )
    return int(rows[0][0])


def test_close_interrupts_a_query_in_flight_through_pgbouncer(
    bounced_dsn: str,
    make_pool: Callable[..., Any],
    module_cluster: PostgresCluster,
    pg: Any,
    poll: Any,
) -> None:
    # The socket is shut down, so the holder's call fails at once. (Whether the server
    # stops the statement too is not promised through PgBouncer: psycopg 3's cancel request
    # races with the shutdown, after which PgBouncer no longer knows the client; psycopg2
    # sends none there, the pid it knows being PgBouncer's.)
    primary = module_cluster.primary
    pool = make_pool(bounced_dsn, pgbouncer=True)
    outcome: dict[str, Any] = {}

    def sleep() -> None:
        started = time.monotonic()
        try:
            with pool.connect() as conn:
                conn.execute(SLEEP)
        except Exception as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - started

    holder = threading.Thread(target=sleep, name="bounced-sleeper")
    holder.start()
    try:
        poll(lambda: _sleeping(primary) == 1, timeout=20, what="pg_sleep running")
        pool.close(timeout=0.2)
        holder.join(10)
        assert not holder.is_alive(), "the holder's query outlived close()"
    finally:
        primary.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = %s", [SLEEP])
        holder.join(35)
    assert isinstance(outcome["error"], pg.module.OperationalError)
    assert outcome["waited"] < 10


def test_a_session_another_client_set_read_only_does_not_demote_the_primary(
    module_cluster: PostgresCluster,
    bouncers: list[Any],
    make_pool: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    # In transaction mode a session-level SET stays on the server session for whoever gets
    # it next, the role checks included: `SET default_transaction_read_only = on` from any
    # client made the healthy primary a replica for as long as that session lived.
    bouncer = pgbouncer.PgBouncer(
        module_cluster, module_cluster.primary, pool_mode="transaction", pool_size=1
    ).start()
    try:
        pool = make_pool(bouncer.dsn(), pgbouncer=True, refresh_delay=0.02)
        pool.factory.ready(1, 0, timeout=10)
        changes: list[Any] = []
        pool.factory.subscribe(changes.append)
        with psycopg.connect(bouncer.dsn(), autocommit=True, prepare_threshold=None) as other:
            # One server session behind this PgBouncer: the checks get this one.
            other.execute("SET default_transaction_read_only = on")
            (host,) = pool.factory._topology.hosts
            done = host.checks
            poll(lambda: host.checks >= done + 10, timeout=20, what="ten more checks")
            assert changes == []
            assert pool.factory.hosts()[0].role is Role.PRIMARY
            other.execute("RESET default_transaction_read_only")
    finally:
        bouncer.close()
