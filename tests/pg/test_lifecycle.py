"""What a pool over Postgres leaves behind: after close(), after threads end, after a fork."""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import qdbpool
from qdbpool.cluster import Role
from qdbpool.testing.postgres import PostgresCluster
from qdbpool.testing.proxy import FaultProxy


@pytest.fixture
def lifecycle_cluster(module_cluster: PostgresCluster) -> PostgresCluster:
    """Counting backends needs a cluster that no other module's pools use (module-scoped)."""
    return module_cluster


def monitor_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("qdbpool-monitor")}


def test_pool_close_stops_the_monitor_thread(
    lifecycle_cluster: Any, make_pool: Any, poll: Any
) -> None:
    before = monitor_threads()
    pool = make_pool(lifecycle_cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect() as conn, pool.connect(read_only=True) as replica:
        conn.execute("SELECT 1")
        replica.execute("SELECT 1")
    ours = monitor_threads() - before
    assert len(ours) == 1

    pool.close()
    poll(lambda: not any(t.is_alive() for t in ours), timeout=5, what="monitor thread ended")
    poll(lambda: not monitor_threads(), timeout=5, what="no qdbpool-monitor thread alive")


def test_pool_close_leaves_no_backends_of_the_test_user(
    lifecycle_cluster: Any, make_pool: Any, hold: Any, poll: Any, app_backends: Any
) -> None:
    pool = make_pool(lifecycle_cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    # Threads still alive, holding connections of both routes: some idle in their slot,
    # some checked out.
    holders = [
        hold(pool, read_only=read_only, checked_out=checked_out)
        for read_only in (False, True)
        for checked_out in (False, True)
    ]
    for h in holders:
        h.wait_opened()
    assert sum(map(len, app_backends(lifecycle_cluster, monitors=True).values())) >= 4 + 3

    # Nothing is given back: idle ones close at once, checked-out ones after the timeout.
    pool.close(timeout=0.5)
    poll(
        lambda: not any(app_backends(lifecycle_cluster, monitors=True).values()),
        timeout=10,
        what="no backend of the test user left",
    )


def test_pool_close_during_a_stalled_check_leaves_no_monitor_session_once_the_host_heals(
    lifecycle_cluster: Any,
    make_pool: Any,
    url_for: Any,
    status_of: Any,
    poll: Any,
    monitor_backends: Any,
) -> None:
    primary, direct, behind = lifecycle_cluster.nodes
    with FaultProxy(behind.host, behind.port) as proxy:
        hosts = [(primary.host, primary.port), (direct.host, direct.port), proxy.address]
        # connect_timeout: the attempt below must outlive close() by far, to be seen.
        pool = make_pool(url_for(lifecycle_cluster, hosts), refresh_delay=0.1, connect_timeout=5)
        pool.factory.ready(1, 2, timeout=10)
        assert proxy.accepted == 1  # the monitor's probe

        proxy.stall()
        poll(lambda: status_of(pool, proxy.port).role is Role.DOWN, what="stalled host down")
        # A later check is now opening a new probe session through the stalled link.
        poll(lambda: proxy.accepted >= 2, what="a new probe connecting")
        pool.close()
        proxy.pass_through()  # the network heals: that connection attempt completes

        # Every session through the proxy ends, and none is left on the server.
        poll(
            lambda: proxy.connections == 0 and not monitor_backends(behind),
            timeout=6,
            what="no monitor session left on the healed host",
        )


def test_two_thousand_short_lived_threads_leave_no_backends_behind(
    make_cluster: Any, make_pool: Any, poll: Any, app_backends: Any
) -> None:
    # Authentication is beside the point here: a trust cluster keeps 2,000 logins cheap.
    c = make_cluster(standbys=2, user="app")
    pool = make_pool(c.multi_host_dsn())
    qdbpool.initialize(pool)
    pool.factory.ready(1, 2, timeout=10)
    before = app_backends(c)

    @qdbpool.with_conn()
    def write(conn: Any) -> None:
        conn.execute("SELECT 1")

    @qdbpool.with_conn(read_only=True)
    def read(conn: Any) -> None:
        conn.execute("SELECT 1")

    errors: list[BaseException] = []

    def one_query(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    for batch in range(40):  # 40 x 50 threads, each ends right after its one query
        threads = [
            threading.Thread(target=one_query, args=(read if i % 2 else write,)) for i in range(50)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), f"batch {batch} stuck"
    assert errors == []
    assert pool.stats().created == 2000

    poll(lambda: app_backends(c) == before, timeout=15, what="backends back to where they were")
    assert pool.stats().open == 0


def test_a_forked_child_neither_uses_nor_closes_the_parents_connections(
    lifecycle_cluster: Any, make_pool: Any, monitor_backends: Any
) -> None:
    pool = make_pool(lifecycle_cluster.multi_host_dsn())
    qdbpool.initialize(pool)
    pool.factory.ready(1, 2, timeout=10)

    @qdbpool.with_conn()
    def backend_pid(conn: Any) -> int:
        return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])

    parent_pid = backend_pid()
    probes = {node.name: monitor_backends(node) for node in lifecycle_cluster.nodes}

    def child(send: Any) -> None:
        try:
            send.send(("pid", backend_pid()))
            qdbpool.close()  # closes the child's pool, its factory and monitor
            gc.collect()
        except BaseException as exc:
            send.send(("error", repr(exc)))
            raise

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=child, args=(send,))
    process.start()
    try:
        assert receive.poll(30), "the child said nothing"
        kind, value = receive.recv()
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
    assert kind == "pid", value
    assert process.exitcode == 0
    assert value != parent_pid  # the child got a connection of its own

    assert backend_pid() == parent_pid  # the parent's connection is intact, same session
    # ... and so are the monitor's probe sessions: the child closed none of them.
    for node in lifecycle_cluster.nodes:
        assert set(probes[node.name]) <= set(monitor_backends(node)), node.name


def test_pool_close_interrupts_a_query_in_progress_and_leaves_the_close_to_its_holder(
    lifecycle_cluster: Any, make_pool: Any, poll: Any, pg: Any
) -> None:
    # Freeing a psycopg connection under the thread running a query on it is a
    # use-after-free in libpq (an abort, the whole test run gone): close() must interrupt
    # the query instead and let the holder close the connection when it gives it back.
    pool = make_pool(lifecycle_cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    primary = lifecycle_cluster.nodes[0]
    running = threading.Event()
    outcome: dict[str, Any] = {}

    def holder() -> None:
        with pool.connect() as conn:
            outcome["backend"] = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            running.set()
            started = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(60)")
            except Exception as exc:
                outcome["error"] = exc
            outcome["waited"] = time.monotonic() - started
            outcome["in use while it failed"] = pool.stats().in_use
        outcome["open after release"] = pool.stats().open

    thread = threading.Thread(target=holder, name="pg-sleeper")
    thread.start()
    try:
        assert running.wait(30)
        poll(
            lambda: primary.sql(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                [outcome["backend"]],
                dbname="postgres",
            ),
            what="the pg_sleep query running",
        )
        pool.close(timeout=0.2)
        thread.join(30)
    finally:
        lifecycle_cluster.nodes[0].sql(
            "SELECT pg_terminate_backend(%s)", [outcome.get("backend", 0)], dbname="postgres"
        )
        thread.join(30)
    assert not thread.is_alive()
    # Lost (the socket shut down) or QueryCanceled (the cancel request won the race): both
    # are the driver's OperationalError.
    assert isinstance(outcome["error"], pg.module.OperationalError)
    assert outcome["waited"] < 30  # interrupted, not left to run its 60 s
    # Counted closed once close() gave up waiting; its holder closes it on release.
    assert outcome["in use while it failed"] == 0
    assert outcome["open after release"] == 0


CLOSE_DURING_CHECKS = """
import random, sys, time
from qdbpool.factories.postgres import Postgres

dsn, rounds, reuse = sys.stdin.read(), int(sys.argv[1]), sys.argv[2] == "same"
driver = sys.argv[3]
factory = Postgres(dsn, refresh_delay=0.001, driver=driver)
for _ in range(rounds):
    if not reuse:
        factory = Postgres(dsn, refresh_delay=0.001, driver=driver)
    factory.ready(1, 2, timeout=10)  # (re)starts the monitor
    time.sleep(random.random() * 0.003)  # close at a random point of a check round
    factory.close()
print("done", rounds)
"""


@pytest.mark.parametrize("factory", ["new", "same"])
def test_closing_a_factory_while_its_checks_run_never_crashes(
    lifecycle_cluster: Any, factory: str, pg: Any
) -> None:
    # Checks run every millisecond, and close() lands anywhere in one: a probe closed under
    # its check aborted the interpreter within ~100 rounds before checks owned their probe.
    # "same": one factory closed and started again 200 times, as pools come and go over it.
    # In a child process, so that a crash fails this test instead of ending the run.
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", CLOSE_DURING_CHECKS, "200", factory, pg.name],
        input=lifecycle_cluster.multi_host_dsn(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.split() == ["done", "200"]
    assert "is down" not in child.stderr  # a check cut short by close() blames no host


def test_a_factory_serves_a_new_pool_after_its_last_pool_closed(
    lifecycle_cluster: Any, where: Any, pg: Any
) -> None:
    # initialize(factory) twice with one factory: the first pool's close() closes the
    # factory, and the second pool must still get connections (issue 11 §3).
    factory = pg.factory(lifecycle_cluster.multi_host_dsn())
    try:
        for _ in range(3):
            pool = qdbpool.initialize(factory)
            with pool.connect() as conn:
                assert where(conn)[1] is False  # the primary
            with pool.connect(read_only=True) as conn:
                assert where(conn)[1] is True  # a replica
            qdbpool.initialize(factory)  # closes the pool above, hence the factory
            with qdbpool.instance().connect() as conn:
                assert where(conn)[1] is False
            qdbpool.close()
            assert all(h.connections == 0 for h in factory.hosts())
    finally:
        factory.close()
