"""What each PostgreSQL driver (psycopg 3, psycopg2) promises about one host, on a real
server: a connection's state after use known without I/O, probes that leave no transaction
open, errors told apart (lost, refused as read-only, refused for what we asked), a cancel
that stops the statement on the server and freezes nothing, sever."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from qdbpool.drivers import Role
from qdbpool.dsn import HostPort
from qdbpool.protocol import CLEAN, LOST, NEEDS_RESET
from qdbpool.testing.proxy import FaultProxy

SLEEP = "SELECT pg_sleep(30) /* qdbpool driver test */"


def _sleeping(node: Any) -> int:
    rows = node.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s", [SLEEP]
    )
    return int(rows[0][0])


def _state_on_server(node: Any, pid: int) -> str | None:
    rows = node.sql("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
    return rows[0][0] if rows else None


@pytest.fixture
def opened(closing: Callable[[Any], Any]) -> Callable[..., Any]:
    """opened(driver, address, probe=False): a connection, closed when the test ends."""

    class Closer:
        def __init__(self, driver: Any, conn: Any) -> None:
            self.driver, self.conn = driver, conn

        def close(self) -> None:
            self.driver.close(self.conn)

    def open_(driver: Any, address: Any, *, probe: bool = False, read_only: bool = False) -> Any:
        conn = (
            driver.open_probe(address, 2.0) if probe else driver.open(address, read_only=read_only)
        )
        closing(Closer(driver, conn))
        return conn

    return open_


def address_of(node: Any) -> HostPort:
    return HostPort(node.host, node.port)


def _pid(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


class _Sleeper:
    """SLEEP run on `conn` in a thread of its own (which owns it), started once the
    server shows it running; `outcome` gets its "error" and the seconds it "waited"."""

    def __init__(self, conn: Any, node: Any, poll: Any) -> None:
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(
            target=self._sleep, args=(conn,), name="driver-sleeper", daemon=True
        )
        self.thread.start()
        poll(lambda: _sleeping(node) == 1, timeout=20, what="pg_sleep running")

    def _sleep(self, conn: Any) -> None:
        started = time.monotonic()
        try:
            conn.execute(SLEEP)
        except Exception as exc:
            self.outcome["error"] = exc
        self.outcome["waited"] = time.monotonic() - started


def test_the_state_after_use_is_known_without_io_and_reset_makes_it_clean(
    shared_cluster: Any, pg: Any, opened: Any
) -> None:
    primary = shared_cluster.primary
    driver = pg.host_driver(primary.dsn())
    conn = opened(driver, address_of(primary))
    assert driver.state_after_use(conn) == CLEAN
    assert not driver.after_use_hint(conn)

    pid = _pid(conn)  # autocommit is off: this opened a transaction
    assert driver.state_after_use(conn) == NEEDS_RESET
    assert driver.after_use_hint(conn)
    assert _state_on_server(primary, pid) == "idle in transaction"
    driver.reset(conn)
    assert driver.state_after_use(conn) == CLEAN
    assert _state_on_server(primary, pid) == "idle"

    with contextlib.suppress(pg.module.errors.DivisionByZero):
        conn.execute("SELECT 1/0")
    assert driver.state_after_use(conn) == NEEDS_RESET  # a failed transaction
    driver.reset(conn)
    assert driver.state_after_use(conn) == CLEAN

    conn.close()
    assert driver.state_after_use(conn) == LOST
    assert not driver.is_open(conn)


def test_ping_is_a_round_trip_that_opens_no_transaction(
    shared_cluster: Any, pg: Any, opened: Any
) -> None:
    primary = shared_cluster.primary
    driver = pg.host_driver(primary.dsn())
    conn = opened(driver, address_of(primary))
    driver.ping(conn)
    assert driver.state_after_use(conn) == CLEAN
    assert conn.autocommit is False  # the user's mode is back
    pid = _pid(conn)
    driver.reset(conn)
    primary.sql("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(pg.module.OperationalError):
        driver.ping(conn)


def test_a_probe_reads_each_role_and_leaves_no_transaction_open(
    shared_cluster: Any, pg: Any, opened: Any
) -> None:
    primary, standby = shared_cluster.primary, shared_cluster.standbys[0]
    driver = pg.host_driver(shared_cluster.multi_host_dsn())
    for node, role in ((primary, Role.PRIMARY), (standby, Role.REPLICA)):
        probe = opened(driver, address_of(node), probe=True)
        for _ in range(2):
            assert driver.observe(probe).role is role
        assert driver.state_after_use(probe) == CLEAN
        pid = int(probe.info.backend_pid)
        assert _state_on_server(node, pid) == "idle"  # not "idle in transaction"


def test_errors_are_told_apart_lost_read_only_and_other(
    shared_cluster: Any, pg: Any, opened: Any
) -> None:
    primary, standby = shared_cluster.primary, shared_cluster.standbys[0]
    driver = pg.host_driver(shared_cluster.multi_host_dsn())

    with pytest.raises(pg.module.OperationalError) as not_writable:
        driver.open(address_of(standby), read_only=False)  # a connection for writes
    assert driver.is_read_only_violation(not_writable.value)
    assert not driver.is_configuration_error(not_writable.value)

    replica = opened(driver, address_of(standby), read_only=True)
    with pytest.raises(pg.module.Error) as refused:
        replica.execute("CREATE TABLE refused_here (i int)")
    assert driver.is_read_only_violation(refused.value)
    assert not driver.is_connection_lost(replica, refused.value)

    conn = opened(driver, address_of(primary))
    with pytest.raises(pg.module.Error) as typo:
        conn.execute("SELEC 1")
    assert not driver.is_read_only_violation(typo.value)
    assert not driver.is_connection_lost(conn, typo.value)
    driver.reset(conn)

    primary.sql("SELECT pg_terminate_backend(%s)", [_pid(conn)])
    with pytest.raises(pg.module.Error) as lost:
        conn.execute("SELECT 1")
    assert driver.is_connection_lost(conn, lost.value)
    assert driver.state_after_use(conn) == LOST


def test_a_wrong_password_is_a_configuration_error_described_without_it(
    shared_cluster: Any, pg: Any
) -> None:
    primary = shared_cluster.primary
    wrong = "Zz-not-the-password-Zz"
    driver = pg.host_driver(primary.dsn(password=wrong))
    with pytest.raises(pg.module.OperationalError) as refused:
        driver.open(address_of(primary), read_only=False)
    assert driver.is_configuration_error(refused.value)
    assert wrong not in driver.describe_error(refused.value)


def test_cancel_stops_the_running_statement_on_the_server(
    shared_cluster: Any, pg: Any, opened: Any, poll: Any
) -> None:
    primary = shared_cluster.primary
    driver = pg.host_driver(primary.dsn())
    address = address_of(primary)
    conn = opened(driver, address)
    sleeper = _Sleeper(conn, primary, poll)
    try:
        driver.cancel(conn, address)  # from this thread, which does not own `conn`
        poll(lambda: _sleeping(primary) == 0, timeout=5, what="pg_sleep stopped")
    finally:
        sleeper.thread.join(35)
    outcome = sleeper.outcome
    assert isinstance(outcome["error"], pg.module.errors.QueryCanceled)
    assert outcome["waited"] < 10
    assert not driver.is_connection_lost(conn, outcome["error"])  # the session lives on
    driver.reset(conn)
    assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_the_same_cancel_request_can_be_sent_again(
    shared_cluster: Any, pg: Any, opened: Any, poll: Any
) -> None:
    """qdbpool.aio sends a cancel again when the server may have ignored it (it arrived
    before the statement): the sender made once must work every time, not just once."""
    primary = shared_cluster.primary
    driver = pg.host_driver(primary.dsn())
    address = address_of(primary)
    conn = opened(driver, address)
    send = driver.cancel_sender(conn, address)
    assert send is not None
    send()  # nothing running: ignored by the server
    send()
    sleeper = _Sleeper(conn, primary, poll)
    try:
        send()  # the third time: this one stops it
        poll(lambda: _sleeping(primary) == 0, timeout=5, what="pg_sleep stopped")
    finally:
        sleeper.thread.join(35)
    assert isinstance(sleeper.outcome["error"], pg.module.errors.QueryCanceled)


def test_a_cancel_sent_to_a_stalled_host_freezes_no_thread(
    shared_cluster: Any, pg: Any, opened: Any
) -> None:
    # libpq's PQcancel, behind psycopg2's conn.cancel(), holds the GIL until the host
    # answers; a stalled one never does, and the whole process froze for good.
    primary = shared_cluster.primary
    with FaultProxy(primary.host, primary.port) as proxy:
        driver = pg.host_driver(primary.dsn())
        address = HostPort(*proxy.address)
        conn = opened(driver, address)
        proxy.stall()
        started = time.monotonic()
        driver.cancel(conn, address)
        ticks = 0
        while time.monotonic() - started < 1.0:
            time.sleep(0.01)
            ticks += 1
        proxy.pass_through()
    assert ticks > 50, f"the process ran only {ticks} ticks of 10 ms in 1 s"


def test_sever_makes_a_blocked_statement_fail_at_once_as_lost(
    shared_cluster: Any, pg: Any, opened: Any, poll: Any
) -> None:
    primary = shared_cluster.primary
    driver = pg.host_driver(primary.dsn())
    conn = opened(driver, address_of(primary))
    sleeper = _Sleeper(conn, primary, poll)
    try:
        driver.sever(conn)
        sleeper.thread.join(5)
        assert not sleeper.thread.is_alive(), "the statement outlived its socket"
    finally:
        primary.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = %s", [SLEEP])
        sleeper.thread.join(35)
    assert driver.is_connection_lost(conn, sleeper.outcome["error"])
    assert driver.state_after_use(conn) == LOST
