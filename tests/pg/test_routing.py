"""Routing on a healthy cluster: writes to the primary, reads to replicas, balancer policies.

These tests leave the cluster's topology alone, so they share one cluster.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any

import pytest

import qdbpool


@pytest.fixture
def pool(shared_cluster: Any, make_pool: Any) -> Any:
    p = make_pool(shared_cluster.multi_host_dsn())
    p.factory.ready(masters_count=1, replicas_count=2, timeout=10)
    return p


def replica_ports(c: Any) -> set[int]:
    return {n.port for n in c.standbys}


def test_writes_land_on_the_primary(shared_cluster: Any, pool: Any, where: Any) -> None:
    with pool.connect() as conn:
        port, in_recovery, _ = where(conn)
        # A temporary table can be created on a primary only (a standby refuses any write).
        conn.execute("CREATE TEMP TABLE written (x int)")
        conn.execute("INSERT INTO written VALUES (1)")
        conn.commit()
    assert port == shared_cluster.primary.port
    assert in_recovery is False


def test_reads_land_on_a_replica(shared_cluster: Any, pool: Any, where: Any) -> None:
    with pool.connect(read_only=True) as conn:
        port, in_recovery, _ = where(conn)
    assert port in replica_ports(shared_cluster)
    assert in_recovery is True


def test_libpq_host_selection_in_the_dsn_is_left_to_the_factory(
    shared_cluster: Any, make_pool: Any, where: Any
) -> None:
    # A DSN written for libpq's own failover: passed on to each host, target_session_attrs=
    # read-write would make every replica (and the monitor's view of it) look down.
    dsn = shared_cluster.multi_host_dsn(
        target_session_attrs="read-write", load_balance_hosts="random"
    )
    pool = make_pool(dsn)
    pool.factory.ready(masters_count=1, replicas_count=2, timeout=10)
    with pool.connect(read_only=True) as conn:
        assert where(conn)[1] is True
    with pool.connect() as conn:
        assert where(conn)[:2] == (shared_cluster.primary.port, False)


def test_with_conn_routes_writes_to_the_primary_and_reads_to_a_replica(
    shared_cluster: Any, pool: Any, where: Any
) -> None:
    qdbpool.initialize(pool)

    @qdbpool.with_conn()
    def write_side(conn: Any) -> tuple[int, bool, int]:
        return where(conn)  # type: ignore[no-any-return]

    @qdbpool.with_conn(read_only=True)
    def read_side(conn: Any) -> tuple[int, bool, int]:
        return where(conn)  # type: ignore[no-any-return]

    assert write_side()[:2] == (shared_cluster.primary.port, False)
    port, in_recovery, _ = read_side()
    assert port in replica_ports(shared_cluster)
    assert in_recovery is True


def test_a_thread_holds_one_primary_and_one_replica_connection_at_once(
    shared_cluster: Any, pool: Any, where: Any
) -> None:
    qdbpool.initialize(pool)

    @qdbpool.with_conn(read_only=True)
    def read_side(conn: Any) -> tuple[int, bool, int]:
        return where(conn)  # type: ignore[no-any-return]

    @qdbpool.with_conn()
    def write_then_read(conn: Any) -> tuple[tuple[int, bool, int], tuple[int, bool, int]]:
        return where(conn), read_side()  # the read runs while the write connection is held

    first = write_then_read()
    second = write_then_read()

    (w_port, _, _), (r_port, _, _) = first
    assert w_port == shared_cluster.primary.port
    assert r_port in replica_ports(shared_cluster)
    assert second == first  # the same two backends again: one slot per route, both kept
    assert pool.stats().open == 2


def test_greedy_spreads_threads_opened_one_after_another_evenly(
    shared_cluster: Any, pool: Any, hold: Any
) -> None:
    ports = []
    for _ in range(6):
        ports.append(hold(pool, read_only=True).wait_opened())  # each holds its connection
    counts = collections.Counter(ports)
    assert set(counts) == replica_ports(shared_cluster)
    assert sorted(counts.values()) == [3, 3]


def test_greedy_spreads_threads_opening_at_the_same_time_evenly(
    shared_cluster: Any, make_pool: Any, hold: Any
) -> None:
    # Threads that connect at once must not all see "0 connections" on every replica: the
    # connections being opened count too. Several rounds, since ties are broken at random.
    threads = 24
    for round_ in range(3):
        pool = make_pool(shared_cluster.multi_host_dsn())
        pool.factory.ready(1, 2, timeout=10)
        barrier = threading.Barrier(threads)
        holders = [hold(pool, read_only=True, start=barrier) for _ in range(threads)]
        counts = collections.Counter(h.wait_opened() for h in holders)
        for h in holders:
            h.stop()
        pool.close()
        assert set(counts) <= replica_ports(shared_cluster)
        spread = [counts.get(port, 0) for port in sorted(replica_ports(shared_cluster))]
        assert max(spread) - min(spread) <= 1, f"round {round_}: {threads} reads split {spread}"


def test_round_robin_alternates_between_replicas(
    shared_cluster: Any, make_pool: Any, read_port_in_new_thread: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn(), balancer="round_robin")
    pool.factory.ready(1, 2, timeout=10)
    ports = [read_port_in_new_thread(pool) for _ in range(8)]
    assert set(ports) == replica_ports(shared_cluster)
    assert all(a != b for a, b in itertools.pairwise(ports)), ports


def test_random_weighted_favours_the_faster_replica(
    shared_cluster: Any,
    make_pool: Any,
    make_delay_proxy: Any,
    url_for: Any,
    status_of: Any,
    poll: Any,
    read_port_in_new_thread: Any,
) -> None:
    primary, fast, slow = shared_cluster.primary, *shared_cluster.standbys
    slow_link = make_delay_proxy(slow.port, 0.1)  # every answer of `slow` comes 100 ms late
    dsn = url_for(
        shared_cluster,
        [(primary.host, primary.port), (fast.host, fast.port), ("127.0.0.1", slow_link.port)],
    )
    pool = make_pool(dsn, balancer="random_weighted", refresh_delay=0.05)
    pool.factory.ready(1, 2, timeout=10)

    def measured() -> bool:
        fast_rt = status_of(pool, fast.port).response_time
        slow_rt = status_of(pool, slow_link.port).response_time
        return bool(fast_rt and slow_rt and slow_rt >= 0.1 and slow_rt > 5 * fast_rt)

    poll(measured, what="response times measured")
    draws = 40
    ports = collections.Counter(read_port_in_new_thread(pool) for _ in range(draws))
    # Weights are inverse response times (>= 5:1 here): a uniform choice would give ~20.
    assert set(ports) <= {fast.port, slow.port}
    assert ports[fast.port] >= 30, ports


def test_master_as_replica_weight_one_lets_reads_land_on_the_primary(
    shared_cluster: Any, make_pool: Any, hold: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn(), master_as_replica_weight=1.0)
    pool.factory.ready(1, 2, timeout=10)
    counts = collections.Counter(hold(pool, read_only=True).wait_opened() for _ in range(6))
    assert counts[shared_cluster.primary.port] >= 1, counts


def test_master_as_replica_weight_zero_keeps_reads_off_the_primary(
    shared_cluster: Any, make_pool: Any, hold: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn(), master_as_replica_weight=0.0)
    pool.factory.ready(1, 2, timeout=10)
    counts = collections.Counter(hold(pool, read_only=True).wait_opened() for _ in range(6))
    assert shared_cluster.primary.port not in counts, counts


def test_bounded_pool_routes_writes_and_reads(
    shared_cluster: Any, make_pool: Any, where: Any, hold: Any
) -> None:
    pool = make_pool(
        shared_cluster.multi_host_dsn(),
        pool_cls=qdbpool.BoundedPool,
        pool_kwargs={"size": 2, "max_size": 4},
    )
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect() as w, pool.connect(read_only=True) as r:
        assert where(w)[:2] == (shared_cluster.primary.port, False)
        port, in_recovery, _ = where(r)
        assert port in replica_ports(shared_cluster) and in_recovery
    barrier = threading.Barrier(4)
    holders = [hold(pool, read_only=True, start=barrier) for _ in range(4)]
    assert {h.wait_opened() for h in holders} <= replica_ports(shared_cluster)
    assert pool.stats().open <= 4


def _dict_rows(pg: Any) -> dict[str, Any]:
    """The driver's option for rows as dicts, as an application may give the factory."""
    if pg.name == "psycopg":
        from psycopg.rows import dict_row

        return {"row_factory": dict_row}
    import psycopg2.extras

    return {"cursor_factory": psycopg2.extras.RealDictCursor}


def test_rows_as_dicts_for_the_application_leave_the_role_checks_alone(
    shared_cluster: Any, make_pool: Any, pg: Any
) -> None:
    # The monitor reads its role query as tuples whatever the application asked for: with
    # the user's row factory, psycopg's probes read column names and found no primary.
    pool = make_pool(shared_cluster.multi_host_dsn(), acquire_timeout=5, **_dict_rows(pg))
    pool.factory.ready(masters_count=1, replicas_count=2, timeout=10)
    query = "SELECT inet_server_port() AS port, pg_is_in_recovery() AS standby"
    with pool.connect() as conn:
        assert conn.execute(query).fetchone() == {
            "port": shared_cluster.primary.port,
            "standby": False,
        }
    with pool.connect(read_only=True) as conn:
        row = conn.execute(query).fetchone()
    assert row["port"] in replica_ports(shared_cluster)
    assert row["standby"] is True
