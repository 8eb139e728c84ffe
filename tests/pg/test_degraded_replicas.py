"""Reads when replicas are down, lagging or stalled: fallback_master, max_replica_lag, and
a blackholed replica behind the fault proxy. Each test breaks its own cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import qdbpool
from qdbpool.cluster import Role
from qdbpool.testing._process import wait_until
from qdbpool.testing.proxy import FaultProxy


def test_reads_fall_back_to_the_primary_when_no_replica_is_up(
    cluster: Any, make_pool: Any, status_of: Any, poll: Any, where: Any
) -> None:
    pool = make_pool(cluster.multi_host_dsn(), fallback_master=True)
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect(read_only=True) as conn:
        assert where(conn)[0] in {n.port for n in cluster.standbys}

    for node in cluster.standbys:
        node.stop()
    poll(
        lambda: all(status_of(pool, n.port).role is Role.DOWN for n in cluster.standbys),
        what="both standbys seen down",
    )
    # The same thread: its replica connection is replaced, without an error, by one to the
    # primary.
    with pool.connect(read_only=True) as conn:
        assert where(conn)[0] == cluster.primary.port


def test_reads_without_fallback_master_raise_no_host_available_after_acquire_timeout(
    cluster: Any, make_pool: Any, status_of: Any, poll: Any
) -> None:
    for node in cluster.standbys:
        node.stop()
    pool = make_pool(cluster.multi_host_dsn(), fallback_master=False, acquire_timeout=1.0)
    pool.factory.ready(masters_count=1, timeout=10)

    started = time.monotonic()
    with pytest.raises(qdbpool.NoHostAvailableError) as raised:
        pool.connect(read_only=True)
    waited = time.monotonic() - started

    assert 0.9 <= waited < 3.0
    for node in cluster.nodes:
        assert f"127.0.0.1:{node.port}" in str(raised.value)
    with pool.connect() as conn:  # writes still work: only reads have nowhere to go
        conn.execute("SELECT 1")


def _pause_replay(standby: Any) -> None:
    standby.sql("SELECT pg_wal_replay_pause()")


def _cut_off(standby: Any) -> None:
    # Its WAL receiver stops: the standby has replayed all it received, which counted as
    # lag 0 for good while the primary moved on.
    standby.admin_sql("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'")
    standby.admin_sql("SELECT pg_reload_conf()")
    wait_until(
        lambda: not standby.admin_sql("SELECT count(*) FROM pg_stat_wal_receiver")[0][0],
        timeout=10,
        what="the cut-off standby's WAL receiver gone",
    )


@pytest.mark.parametrize("behind", [_pause_replay, _cut_off], ids=["replay paused", "cut off"])
def test_a_replica_lagging_beyond_max_replica_lag_gets_no_reads(
    cluster: Any,
    make_pool: Any,
    status_of: Any,
    poll: Any,
    read_port_in_new_thread: Any,
    behind: Callable[[Any], None],
) -> None:
    lagging, fresh = cluster.standbys
    pool = make_pool(cluster.multi_host_dsn(), max_replica_lag=0.5, refresh_delay=0.1)
    pool.factory.ready(1, 2, timeout=10)

    behind(lagging)
    cluster.primary.sql("CREATE TABLE lag_probe AS SELECT 1 AS x")  # WAL it will not replay
    status = poll(
        lambda: (
            (s := status_of(pool, lagging.port)).replica_lag is not None
            and s.replica_lag > 0.5
            and s
        ),
        what="the lagging standby reported lagging",
    )
    assert status.role is Role.REPLICA
    assert status_of(pool, fresh.port).replica_lag <= 0.5

    ports = {read_port_in_new_thread(pool) for _ in range(8)}
    assert ports == {fresh.port}


def test_a_stalled_replica_blocks_no_read_for_long_and_comes_back(
    cluster: Any, make_pool: Any, url_for: Any, status_of: Any, poll: Any
) -> None:
    primary, direct, behind = cluster.primary, *cluster.standbys
    with FaultProxy(behind.host, behind.port) as proxy:
        dsn = url_for(
            cluster,
            [(primary.host, primary.port), (direct.host, direct.port), (proxy.host, proxy.port)],
        )
        pool = make_pool(dsn)
        qdbpool.initialize(pool)
        pool.factory.ready(1, 2, timeout=10)

        @qdbpool.with_conn(read_only=True)
        def read(conn: Any) -> int:
            return int(conn.execute("SELECT inet_server_port()").fetchone()[0])

        stop = threading.Event()
        calls: list[list[tuple[float, float, int | None, str | None]]] = [[] for _ in range(4)]
        first_read = [threading.Event() for _ in calls]

        def reader(log: list[tuple[float, float, int | None, str | None]], first: Any) -> None:
            for _ in range(10_000):
                if stop.is_set():
                    return
                began = time.monotonic()
                try:
                    port, error = read(), None
                except Exception as exc:
                    port, error = None, type(exc).__name__
                log.append((began, time.monotonic() - began, port, error))
                first.set()
                stop.wait(0.01)

        threads = []
        # Started one after another, so that greedy puts two readers on each replica.
        for log, first in zip(calls, first_read, strict=True):
            threads.append(threading.Thread(target=reader, args=(log, first), daemon=True))
            threads[-1].start()
            assert first.wait(10)
        try:
            assert {log[0][2] for log in calls} == {direct.port, behind.port}

            stalled_at = time.monotonic()
            proxy.stall()
            poll(lambda: status_of(pool, proxy.port).role is Role.DOWN, what="stalled host down")
            # Every reader goes on: at least 5 good reads each after the host went down.
            marked_down = time.monotonic()
            poll(
                lambda: all(
                    sum(1 for b, _, p, _ in log if b > marked_down and p == direct.port) >= 5
                    for log in calls
                ),
                what="readers reading from the other replica",
            )
            proxy.pass_through()
            poll(
                lambda: status_of(pool, proxy.port).role is Role.REPLICA,
                what="the healed host back as a replica",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(10)

    during = [c for log in calls for c in log if c[0] + c[1] >= stalled_at]
    longest = max(duration for _, duration, _, _ in during)
    # refresh_delay (1) + refresh_timeout (1) + connect timeout (2), and a margin.
    assert longest < 5.0, f"a read blocked {longest:.2f}s"
    assert all((port is None) != (error is None) for _, _, port, error in during)
    # The stall was felt (readers on that host were cut off), else this proved nothing.
    assert any(error is not None or duration > 0.5 for _, duration, _, error in during)
    assert all(port in (direct.port, behind.port) for _, _, port, _ in during if port)
