"""Primary/replica routing on a real MariaDB primary + replica pair.

Writes go to the primary, reads (`read_only=True`) to the replica. When the roles change
(a switchover, or `SET GLOBAL read_only`), writes follow the new primary; connections held
to the demoted host are dropped, so at most one write fails (error 1290) on the way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pymysql
import pytest

import qdbpool
from qdbpool.cluster import Role
from qdbpool.errors import NoHostAvailableError
from qdbpool.factories.mysql import MySQL
from qdbpool.testing._process import wait_until
from qdbpool.testing.mariadb import MariaDBReplicaPair, MariaDBServer
from qdbpool.testing.proxy import FaultProxy

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(60)]

ER_OPTION_PREVENTS_STATEMENT = 1290  # "... is running with the --read-only option"
APP_USER = "app"
APP_PASSWORD = "Pw/@:%s3cr3t-7xq"  # as in conftest.py
APP_DB = "appdb"


@qdbpool.with_conn
def port_of_write(conn: Any) -> int:
    """Write a row (a real write: refused by a read-only server) and say where it went."""
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {APP_DB}.writes (port) VALUES (@@port)")
        cur.execute("SELECT @@port")
        (port,) = cur.fetchone()
    conn.commit()
    return int(port)


@qdbpool.with_conn(read_only=True)
def port_of_read(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@port")
        (port,) = cur.fetchone()
    return int(port)


def _with_writes_table(cluster: MariaDBReplicaPair) -> None:
    cluster.sql(
        f"CREATE TABLE IF NOT EXISTS {APP_DB}.writes "
        "(id INT AUTO_INCREMENT PRIMARY KEY, port INT NOT NULL) ENGINE=InnoDB"
    )
    cluster.wait_replicated(timeout=10)


def _write_until_it_succeeds(deadline_s: float = 15.0) -> tuple[int, list[int]]:
    """Write until a write succeeds; return its port and the error codes met on the way.

    Only a read-only refusal (1290) is expected on the way; anything else propagates.
    """
    refusals: list[int] = []
    deadline = time.monotonic() + deadline_s
    for _ in range(100):  # bounded: each refused attempt discards a stale connection
        try:
            return port_of_write(), refusals
        except pymysql.err.OperationalError as exc:
            if exc.args[0] != ER_OPTION_PREVENTS_STATEMENT or time.monotonic() > deadline:
                raise
            refusals.append(exc.args[0])
    raise AssertionError(f"no write succeeded after {len(refusals)} refusals")


def _app_sessions(srv: MariaDBServer) -> int:
    rows = srv.sql(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (APP_USER,)
    )
    return int(rows[0][0])


# ------------------------------------------------------------------ steady state


def test_writes_go_to_the_primary(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    _with_writes_table(pair)
    qdbpool.initialize(qdbpool.BoundedPool(make_factory(pair), size=2))
    assert port_of_write() == pair.primary.port


def test_reads_go_to_the_replica(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    qdbpool.initialize(qdbpool.BoundedPool(make_factory(pair), size=2))
    assert port_of_read() == pair.replica.port


def test_reads_and_writes_in_one_thread_use_two_sessions(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    _with_writes_table(pair)
    pool = qdbpool.initialize(qdbpool.SingletonPool(make_factory(pair)))

    @qdbpool.with_conn
    def write_then_read(conn: Any) -> tuple[int, int]:
        with conn.cursor() as cur:
            cur.execute("SELECT @@port")
            (written,) = cur.fetchone()
        return int(written), port_of_read()

    assert write_then_read() == (pair.primary.port, pair.replica.port)
    assert pool.stats().open == 2


def test_hosts_report_each_role(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(pair)
    factory.ready(masters_count=1, replicas_count=1, timeout=10)
    roles = {status.address.port: status.role for status in factory.hosts()}
    assert roles == {pair.primary.port: Role.PRIMARY, pair.replica.port: Role.REPLICA}


def test_ready_returns_once_every_host_was_checked(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(pair)
    factory.ready(timeout=10)
    assert all(status.role is not Role.UNKNOWN for status in factory.hosts())


def test_ready_times_out_naming_each_host(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(pair)
    started = time.monotonic()
    with pytest.raises(NoHostAvailableError, match="not ready") as err:
        factory.ready(masters_count=1, replicas_count=2, timeout=0.5)
    assert time.monotonic() - started < 5
    assert str(pair.primary.port) in str(err.value)
    assert str(pair.replica.port) in str(err.value)
    assert APP_PASSWORD not in str(err.value)


# ------------------------------------------------------------------ no replica


def test_reads_fall_back_to_the_primary_with_fallback_master(
    pair: MariaDBReplicaPair, closing: Callable[[Any], Any]
) -> None:
    only_primary = pair.primary.dsn(APP_USER, APP_PASSWORD, APP_DB)
    qdbpool.initialize(
        qdbpool.BoundedPool(closing(MySQL(only_primary, fallback_master=True)), size=2)
    )
    assert port_of_read() == pair.primary.port


def test_reads_fail_without_a_replica_when_fallback_master_is_off(
    pair: MariaDBReplicaPair, closing: Callable[[Any], Any]
) -> None:
    only_primary = pair.primary.dsn(APP_USER, APP_PASSWORD, APP_DB)
    factory = closing(MySQL(only_primary, acquire_timeout=0.5))
    qdbpool.initialize(qdbpool.BoundedPool(factory, size=2))
    with pytest.raises(NoHostAvailableError, match="replica"):
        port_of_read()


def test_reads_stay_on_the_replica_with_fallback_master(
    pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(pair, fallback_master=True)
    factory.ready(masters_count=1, replicas_count=1, timeout=10)
    qdbpool.initialize(qdbpool.BoundedPool(factory, size=2))
    assert port_of_read() == pair.replica.port


def test_fallback_master_waits_for_a_replica_still_being_checked(
    pair: MariaDBReplicaPair, closing: Callable[[Any], Any]
) -> None:
    # A replica whose first check has not answered yet is not known to be down: a read
    # must not be sent (and then pinned, for the connection's whole life) to the primary.
    # The replica's first check is held up by a stalled proxy until the primary is known.
    with FaultProxy(pair.replica.host, pair.replica.port) as proxy:
        proxy.stall()
        dsn = (
            f"mysql://{APP_USER}:{quote(APP_PASSWORD, safe='')}@"
            f"127.0.0.1:{pair.primary.port},127.0.0.1:{proxy.port}/{APP_DB}"
        )
        factory = closing(MySQL(dsn, fallback_master=True, refresh_timeout=5, acquire_timeout=10))
        ports: list[int] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                conn = factory.connect(read_only=True)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT @@port")
                        ports.append(int(cur.fetchone()[0]))
                finally:
                    factory.close_connection(conn)
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def primary_known_replica_pending() -> bool:
            roles = [status.role for status in factory.hosts()]
            return roles == [Role.PRIMARY, Role.UNKNOWN]

        wait_until(primary_known_replica_pending, timeout=4, what="only the primary checked")
        proxy.pass_through()  # the replica answers its first check now
        reader.join(timeout=15)
        assert not reader.is_alive()
    assert errors == []
    where = {pair.primary.port: "the primary", pair.replica.port: "the replica"}
    assert ports == [pair.replica.port], f"the read went to {[where[p] for p in ports]}"


# ------------------------------------------------------------------ role changes


def test_switch_roles_reroutes_writes_after_at_most_one_read_only_error(
    own_pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    _with_writes_table(own_pair)
    old_primary, old_replica = own_pair.primary, own_pair.replica
    qdbpool.initialize(qdbpool.BoundedPool(make_factory(own_pair), size=4))
    assert port_of_write() == old_primary.port  # an idle connection to it stays pooled

    own_pair.switch_roles()

    port, refusals = _write_until_it_succeeds()
    assert port == old_replica.port
    assert len(refusals) <= 1
    assert [port_of_write() for _ in range(5)] == [old_replica.port] * 5


def test_switch_roles_drops_every_held_connection_to_the_demoted_host(
    own_pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    _with_writes_table(own_pair)
    old_primary = own_pair.primary
    pool = qdbpool.initialize(qdbpool.BoundedPool(make_factory(own_pair), size=4, pre_create=4))
    assert pool.stats().open == 4
    assert _app_sessions(old_primary) == 5  # 4 pooled + the monitor's probe

    own_pair.switch_roles()

    _, refusals = _write_until_it_succeeds()
    assert len(refusals) <= 1  # not one refusal per held connection
    assert pool.stats().discarded >= 4
    # What remains on the demoted host is the monitor's probe, nothing of the pool. (The
    # server takes a moment to drop a session its client has just closed.)
    wait_until(lambda: _app_sessions(old_primary) <= 1, timeout=10, what="pool sessions closed")


def test_set_global_read_only_reroutes_writes(
    own_pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    _with_writes_table(own_pair)
    first, second = own_pair.primary, own_pair.replica
    qdbpool.initialize(qdbpool.BoundedPool(make_factory(own_pair), size=2))
    assert port_of_write() == first.port

    first.set_read_only(True)
    second.set_read_only(False)

    port, refusals = _write_until_it_succeeds()
    assert port == second.port
    assert len(refusals) <= 1


def test_reads_follow_the_switch_to_the_demoted_host(
    own_pair: MariaDBReplicaPair, make_factory: Callable[..., MySQL]
) -> None:
    old_primary = own_pair.primary
    factory = make_factory(own_pair)
    qdbpool.initialize(qdbpool.BoundedPool(factory, size=2))
    assert port_of_read() == own_pair.replica.port

    own_pair.switch_roles()

    def monitor_saw_the_switch() -> bool:
        roles = {s.address.port: s.role for s in factory.hosts()}
        return roles == {old_primary.port: Role.REPLICA, own_pair.primary.port: Role.PRIMARY}

    wait_until(monitor_saw_the_switch, timeout=10, what="the monitor to see the new roles")
    assert port_of_read() == old_primary.port


@pytest.mark.parametrize(
    "rows",
    [{"cursorclass": pymysql.cursors.DictCursor}, {"use_unicode": False}],
    ids=["dict rows", "bytes"],
)
def test_the_applications_row_options_leave_the_role_checks_alone(
    pair: MariaDBReplicaPair, closing: Callable[[Any], Any], rows: dict[str, Any]
) -> None:
    # The monitor reads its role query as text tuples whatever the application asked for:
    # with dict rows or bytes it read no 'ON', took the replica for a primary and, the
    # replica being listed first, sent writes there.
    dsn = (
        f"mysql://{APP_USER}:{quote(APP_PASSWORD, safe='')}@"
        f"127.0.0.1:{pair.replica.port},127.0.0.1:{pair.primary.port}/{APP_DB}"
    )
    factory = closing(MySQL(dsn, acquire_timeout=5, **rows))
    factory.ready(timeout=10)
    assert [status.role for status in factory.hosts()] == [Role.REPLICA, Role.PRIMARY]
    conn = factory.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@port AS port")
            row = cur.fetchone()
    finally:
        factory.close_connection(conn)
    assert row == ({"port": pair.primary.port} if "cursorclass" in rows else (pair.primary.port,))
