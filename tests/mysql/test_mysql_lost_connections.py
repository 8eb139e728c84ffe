"""Connections the server drops (KILL) never reach user code from the pool again.

With pre_ping the pool finds out at checkout and hands out a new session; without it, the
call that meets the dead session fails, and the pool discards it so the next call is
healthy. Both pool strategies, real MariaDB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import qdbpool
from qdbpool.cluster import Role
from qdbpool.factories.mysql import MySQL
from qdbpool.pool import Pool
from qdbpool.testing._process import wait_until
from qdbpool.testing.mariadb import MariaDBServer

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(60)]


def test_killed_idle_connection_is_replaced_at_checkout_with_pre_ping(
    server: MariaDBServer,
    make_global_pool: Callable[..., Pool],
    session_id: Callable[..., int],
) -> None:
    pool = make_global_pool(server, pre_ping=True)
    killed = session_id()
    server.kill_connection(killed)

    fresh = session_id()  # must not raise "server has gone away"

    assert fresh != killed
    assert pool.stats().discarded == 1


def test_killed_connection_is_not_reconnected_in_place(
    server: MariaDBServer, make_global_pool: Callable[..., Pool]
) -> None:
    pool = make_global_pool(server, pre_ping=True)
    with pool.connect() as conn:
        old_raw = conn.__wrapped__
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (killed,) = cur.fetchone()
    server.kill_connection(killed)
    with pool.connect() as conn:
        assert conn.__wrapped__ is not old_raw  # a new connection object, not a revived one
    assert old_raw.open is False
    assert pool.stats().created == 2


def test_error_on_a_killed_connection_discards_it_and_the_next_call_is_healthy(
    server: MariaDBServer,
    make_global_pool: Callable[..., Pool],
    lost_errors: tuple[type[BaseException], ...],
    session_id: Callable[..., int],
) -> None:
    pool = make_global_pool(server)  # no pre_ping: the call that meets the dead session fails
    killed = session_id()
    server.kill_connection(killed)

    with pytest.raises(lost_errors):
        session_id()
    fresh = session_id()

    assert fresh != killed
    stats = pool.stats()
    assert (stats.discarded, stats.open, stats.in_use) == (1, 1, 0)


def test_connection_killing_itself_is_discarded(
    server: MariaDBServer,
    make_global_pool: Callable[..., Pool],
    lost_errors: tuple[type[BaseException], ...],
    session_id: Callable[..., int],
) -> None:
    pool = make_global_pool(server)

    @qdbpool.with_conn
    def kill_own_session(conn: Any) -> int:
        cid = session_id(conn)
        with conn.cursor() as cur:
            cur.execute(f"KILL CONNECTION {cid}")  # MariaDB answers 1927 "connection killed"
        return cid

    with pytest.raises(lost_errors):
        kill_own_session()
    assert pool.stats().open == 0
    assert session_id() > 0


def test_killed_monitor_probe_leaves_the_host_up_and_the_pool_untouched(
    server: MariaDBServer,
    make_factory: Callable[..., MySQL],
    closing: Callable[[Any], Any],
    sessions_of: Callable[[MariaDBServer], set[int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The monitor's probe is one session like any other: a DBA's KILL (or wait_timeout, or
    # a proxy's idle timeout) ends it while the server is perfectly healthy. That must not
    # mark the host down, nor discard the pool's healthy connections.
    caplog.set_level(logging.WARNING, logger="qdbpool")
    factory = make_factory(server)
    pool = closing(qdbpool.BoundedPool(factory, size=1))
    with pool.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (pooled,) = cur.fetchone()
    # Sessions of earlier tests' pools may take a moment to vanish from the processlist.
    wait_until(
        lambda: len(sessions_of(server) - {pooled}) == 1, timeout=10, what="only the probe left"
    )
    (probe,) = sessions_of(server) - {pooled}

    server.kill_connection(probe)

    def probe_replaced() -> bool:
        others = sessions_of(server) - {pooled}
        return bool(others) and probe not in others

    wait_until(probe_replaced, timeout=15, interval=0.05, what="a new monitor probe")
    (status,) = factory.hosts()
    with pool.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        (now_pooled,) = cur.fetchone()
    facts = f"host {status}; pool {pool.stats()}; log: {caplog.text.strip()!r}"
    assert now_pooled == pooled, f"the healthy pooled session was replaced: {facts}"
    assert pool.stats().discarded == 0, facts
    assert status.role is Role.PRIMARY, facts
    assert "is down" not in caplog.text, facts


def test_session_killed_by_the_server_leaves_the_other_pooled_connections_alone(
    server: MariaDBServer,
    make_factory: Callable[..., MySQL],
    closing: Callable[[Any], Any],
    lost_errors: tuple[type[BaseException], ...],
    session_id: Callable[..., int],
) -> None:
    # MariaDB says so explicitly (1927 "Connection was killed"): the server is up and
    # answering, only that one session ended. The pool's other connections to it are fine.
    pool = closing(qdbpool.BoundedPool(make_factory(server), size=2, pre_create=2))
    qdbpool.initialize(pool)

    @qdbpool.with_conn
    def kill_own_session(conn: Any) -> None:
        cid = session_id(conn)
        with conn.cursor() as cur:
            cur.execute(f"KILL CONNECTION {cid}")

    with pytest.raises(lost_errors):
        kill_own_session()
    session_id()  # served by the other pre-created connection

    stats = pool.stats()
    assert (stats.discarded, stats.created) == (1, 2)
