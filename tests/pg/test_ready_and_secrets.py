"""ready(), NoHostAvailableError, and the password: never in an error, a repr or a log line."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

import qdbpool
from qdbpool.cluster import Role


def test_ready_returns_once_the_requested_primaries_and_replicas_are_up(
    shared_cluster: Any, make_pool: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn())
    pool.factory.ready(masters_count=1, replicas_count=2, timeout=10)
    roles = [s.role for s in pool.factory.hosts()]
    assert roles.count(Role.PRIMARY) == 1
    assert roles.count(Role.REPLICA) == 2


def test_ready_without_counts_returns_once_every_host_was_checked(
    shared_cluster: Any, make_pool: Any
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn())
    pool.factory.ready(timeout=10)
    assert all(s.role is not Role.UNKNOWN for s in pool.factory.hosts())


def test_ready_raises_no_host_available_listing_every_host_when_counts_are_not_met(
    shared_cluster: Any, make_pool: Any, secret_mark: str
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn())
    started = time.monotonic()
    with pytest.raises(qdbpool.NoHostAvailableError) as raised:
        pool.factory.ready(masters_count=1, replicas_count=3, timeout=0.5)
    assert 0.45 <= time.monotonic() - started < 3.0
    message = str(raised.value)
    for node in shared_cluster.nodes:
        assert f"127.0.0.1:{node.port}" in message
    assert secret_mark not in message


def test_no_host_available_on_acquire_lists_each_dead_host_without_the_password(
    cluster: Any, make_pool: Any, secret_mark: str
) -> None:
    pool = make_pool(cluster.multi_host_dsn(), acquire_timeout=1.0)
    pool.factory.ready(1, 2, timeout=10)
    for node in cluster.nodes:
        node.kill()

    for read_only in (False, True):
        with pytest.raises(qdbpool.NoHostAvailableError) as raised:
            pool.connect(read_only=read_only)
        message = str(raised.value)
        for node in cluster.nodes:
            assert f"127.0.0.1:{node.port} down" in message, message
        assert secret_mark not in message
        assert secret_mark not in repr(raised.value)


def test_reprs_show_no_password(
    shared_cluster: Any, make_pool: Any, secret_mark: str, password: str
) -> None:
    pool = make_pool(shared_cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect() as conn, pool.connect(read_only=True) as replica:
        shown = [
            repr(pool.factory),
            str(pool.factory),
            repr(pool),
            repr(pool.factory.dsn),
            str(pool.factory.dsn),
            repr(pool.factory.hosts()),
            " ".join(str(s) for s in pool.factory.hosts()),
            repr(conn),
            repr(replica),
            repr(pool.stats()),
        ]
    assert "***" in repr(pool.factory)  # it is there, redacted
    for text in shown:
        assert secret_mark not in text and password not in text, text


@pytest.mark.parametrize("given", ["keyword", "dsn"])
def test_a_connections_repr_shows_no_sslpassword(
    shared_cluster: Any, make_pool: Any, secret_mark: str, given: str
) -> None:
    # psycopg2's own repr shows its DSN with `password` masked and `sslpassword` as is.
    key_password = f"key-{secret_mark}"
    dsn = shared_cluster.multi_host_dsn()
    if given == "keyword":
        pool = make_pool(dsn, sslpassword=key_password)
    else:
        pool = make_pool(f"{dsn}{'&' if '?' in dsn else '?'}sslpassword={key_password}")
    with pool.connect() as conn:
        shown = repr(conn)
    assert secret_mark not in shown, shown


def test_debug_logs_through_a_failover_show_no_password(
    cluster: Any, make_pool: Any, poll: Any, caplog: pytest.LogCaptureFixture, secret_mark: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="qdbpool")
    pool = make_pool(cluster.multi_host_dsn())
    qdbpool.initialize(pool)
    pool.factory.ready(1, 2, timeout=10)

    @qdbpool.with_conn()
    def write(conn: Any) -> int:
        port = int(conn.execute("SELECT inet_server_port()").fetchone()[0])
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
        conn.commit()
        return port

    @qdbpool.with_conn(read_only=True)
    def read(conn: Any) -> int:
        return int(conn.execute("SELECT inet_server_port()").fetchone()[0])

    stop = threading.Event()
    ports: list[int] = []

    def writer() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                ports.append(write())
                read()
            except Exception:
                pass  # the failed call itself is logged by the pool, which is the point
            stop.wait(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        poll(lambda: ports, what="a first write")
        new = cluster.failover()
        poll(lambda: new.port in ports[-3:], timeout=15, what="writes on the new primary")
    finally:
        stop.set()
        thread.join(15)
    pool.close()

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [
        formatter.format(r)
        for r in caplog.records
        if r.name.split(".")[:2] != ["qdbpool", "testing"]
    ]  # the test bed's own log is not the library's
    assert any(f"127.0.0.1:{cluster.nodes[0].port}" in line for line in lines), lines
    leaked = [line for line in lines if secret_mark in line]
    assert leaked == []


def test_no_host_available_after_failed_connects_lists_every_host(
    cluster: Any, make_pool: Any, secret_mark: str
) -> None:
    pool = make_pool(cluster.multi_host_dsn(), acquire_timeout=0.3)
    pool.factory.ready(1, 2, timeout=10)
    # Every host answers the monitor (its probe session is the one the role may have) but
    # refuses any new session: "too many connections for role".
    cluster.primary.sql("ALTER ROLE app CONNECTION LIMIT 1")
    cluster.wait_replicated()

    # Several attempts: the deadline may strike while waiting for a host or right after a
    # failed connect, and either way the error must say where every host stands.
    for _ in range(6):
        with pytest.raises(qdbpool.NoHostAvailableError) as raised:
            pool.connect()
        message = str(raised.value)
        assert secret_mark not in message
        for node in cluster.nodes:
            assert f"127.0.0.1:{node.port}" in message, message
