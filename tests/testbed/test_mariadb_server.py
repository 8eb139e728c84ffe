"""The MariaDB test bed: real servers on 127.0.0.1, each stopped by its own pid."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from qdbpool.testing import mariadb
from qdbpool.testing._process import ServerUnavailable, scratch_root, wait_until
from qdbpool.testing.availability import require_mariadb
from qdbpool.testing.mariadb import (
    MariaDBReplicaPair,
    MariaDBServer,
    MariaDBStartError,
)

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(60)]

ER_OPTION_PREVENTS_STATEMENT = 1290  # "running with the --read-only option"
ER_ACCESS_DENIED = 1045


@pytest.fixture(scope="module")
def server() -> Iterator[MariaDBServer]:
    require_mariadb()
    with MariaDBServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def pair() -> Iterator[MariaDBReplicaPair]:
    require_mariadb()
    with MariaDBReplicaPair() as p:
        p.create_user("app", "app-pw", "appdb")
        yield p


@pytest.fixture
def own_server() -> Iterator[MariaDBServer]:
    """A server the test may stop, kill or close."""
    require_mariadb()
    with MariaDBServer() as srv:
        yield srv


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (e.g. a server's own directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def our_server_dirs() -> set[Path]:
    return set(scratch_root().glob(f"qdbpool-mariadb-{os.getpid()}-*"))


# ------------------------------------------------------------------ the missing-binary rule


def _no_binaries() -> tuple[str, str]:
    raise ServerUnavailable("'mariadbd' is not installed")


def test_missing_binaries_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mariadb, "mariadb_binaries", _no_binaries)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        require_mariadb()


def test_missing_binaries_skip_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mariadb, "mariadb_binaries", _no_binaries)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_mariadb()


# ------------------------------------------------------------------ one server


def test_server_answers_on_its_own_port(server: MariaDBServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.port != 3306
    ((port, datadir, socket),) = server.sql("SELECT @@port, @@datadir, @@socket")
    assert port == server.port
    assert Path(datadir) == server.datadir
    assert Path(socket) == server.socket_path


def test_server_pid_is_our_mariadbd(server: MariaDBServer) -> None:
    assert server.pid is not None
    assert Path(f"/proc/{server.pid}/comm").read_text().strip() == "mariadbd"
    assert os.getppid() != server.pid and os.getpid() == _parent_of(server.pid)


def _parent_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def test_dsn_is_percent_encoded(server: MariaDBServer) -> None:
    assert server.dsn("app", "p@ss:w/rd", "appdb") == (
        f"mysql://app:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}/appdb"
    )


def test_created_user_connects_with_its_password(server: MariaDBServer) -> None:
    server.create_user("alice", "alice-pw", "alicedb")
    with server.connect("alice", "alice-pw", "alicedb") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO t VALUES (1)")
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == ("alice@%", "alicedb")


def test_created_user_is_refused_with_a_wrong_password(server: MariaDBServer) -> None:
    server.create_user("bob", "bob-pw", "bobdb")
    with pytest.raises(pymysql.err.OperationalError) as err:
        server.connect("bob", "wrong", "bobdb")
    assert err.value.args[0] == ER_ACCESS_DENIED


def test_kill_connection_breaks_that_connection(server: MariaDBServer) -> None:
    with server.connect() as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (connection_id,) = cur.fetchone()
        server.kill_connection(connection_id)
        with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")


def test_wait_timeout_expires_an_idle_connection(server: MariaDBServer) -> None:
    previous = server.get_global("wait_timeout")
    server.set_global("wait_timeout", 1)
    try:
        conn = server.connect()  # sessions copy wait_timeout when they connect
    finally:
        server.set_global("wait_timeout", previous)
    with conn:
        connection_id = conn.thread_id()

        # Watched from the server side: any use of `conn` would reset its idle timer.
        def gone() -> bool:
            query = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s"
            return bool(server.sql(query, (connection_id,)) == [(0,)])

        wait_until(gone, timeout=10, interval=0.1, what="idle connection dropped")
        with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")


def test_stop_then_start_keeps_port_and_data(own_server: MariaDBServer) -> None:
    own_server.sql("CREATE DATABASE kept")
    own_server.sql("CREATE TABLE kept.t (id INT PRIMARY KEY)")
    own_server.sql("INSERT INTO kept.t VALUES (42)")
    port, old_pid = own_server.port, own_server.pid
    assert old_pid is not None

    own_server.stop()
    assert own_server.pid is None and not pid_alive(old_pid)
    with pytest.raises(pymysql.err.OperationalError):
        own_server.sql("SELECT 1", connect_timeout=1)

    own_server.start()
    assert own_server.port == port and own_server.pid not in (None, old_pid)
    assert own_server.sql("SELECT id FROM kept.t") == [(42,)]


def test_kill_then_start_recovers(own_server: MariaDBServer) -> None:
    old_pid = own_server.pid
    assert old_pid is not None
    own_server.kill()
    assert own_server.pid is None and not pid_alive(old_pid)
    own_server.start()
    assert own_server.sql("SELECT 1") == [(1,)]


def test_pin_to_cpus_moves_every_server_thread(own_server: MariaDBServer) -> None:
    own_server.pin_to_cpus({0})
    with own_server.connect():  # a connection thread started after pinning
        pid = own_server.pid
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        assert len(tids) > 1
        assert all(os.sched_getaffinity(tid) == {0} for tid in tids)


def test_close_leaves_no_process_and_removes_the_datadir() -> None:
    require_mariadb()
    srv = MariaDBServer()
    pid, base = srv.pid, srv.base_dir
    assert pid is not None and srv.datadir.is_dir()

    srv.close()

    assert not pid_alive(pid)
    assert processes_mentioning(str(base)) == []
    assert not base.exists()
    srv.close()  # idempotent


def test_failed_startup_cleans_up_after_itself() -> None:
    require_mariadb()
    before = our_server_dirs()
    with pytest.raises(MariaDBStartError, match="qdbpool-bogus-option"):
        MariaDBServer(extra_args=["--qdbpool-bogus-option"])
    assert processes_mentioning("--qdbpool-bogus-option") == []
    assert our_server_dirs() <= before


# ------------------------------------------------------------------ replication


def test_replica_runs_both_replication_threads(pair: MariaDBReplicaPair) -> None:
    (status,) = pair.replica.sql_dicts("SHOW REPLICA STATUS")
    assert status["Slave_IO_Running"] == "Yes"
    assert status["Slave_SQL_Running"] == "Yes"
    assert status["Master_Port"] == pair.primary.port
    assert status["Using_Gtid"] == "Slave_Pos"


def test_pair_replicates_a_row(pair: MariaDBReplicaPair) -> None:
    pair.sql("CREATE TABLE appdb.replicated (id INT PRIMARY KEY, note TEXT)")
    pair.sql("INSERT INTO appdb.replicated VALUES (1, 'hello')")
    pair.wait_replicated(timeout=10)
    assert pair.replica.sql("SELECT id, note FROM appdb.replicated") == [(1, "hello")]


def test_read_only_replica_rejects_writes_from_an_ordinary_user(pair: MariaDBReplicaPair) -> None:
    assert pair.replica.get_global("read_only") == 1
    with (
        pair.replica.connect("app", "app-pw", "appdb") as conn,
        conn.cursor() as cur,
        pytest.raises(pymysql.err.OperationalError) as err,
    ):
        cur.execute("CREATE TABLE refused (id INT)")
    assert err.value.args[0] == ER_OPTION_PREVENTS_STATEMENT


def test_multi_host_dsn_lists_the_primary_first(pair: MariaDBReplicaPair) -> None:
    assert pair.multi_host_dsn("app", "app-pw", "appdb") == (
        f"mysql://app:app-pw@127.0.0.1:{pair.primary.port},127.0.0.1:{pair.replica.port}/appdb"
    )


def test_switch_roles_makes_the_replica_the_writable_primary() -> None:
    require_mariadb()
    with MariaDBReplicaPair() as p:
        p.create_user("app", "app-pw", "appdb")
        old_primary, old_replica = p.primary, p.replica

        p.switch_roles()

        assert p.primary is old_replica and p.replica is old_primary
        assert old_replica.get_global("read_only") == 0
        assert old_primary.get_global("read_only") == 1
        with p.primary.connect("app", "app-pw", "appdb") as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE after_switch (id INT PRIMARY KEY)")
            cur.execute("INSERT INTO after_switch VALUES (7)")
        p.wait_replicated(timeout=10)
        assert old_primary.sql("SELECT id FROM appdb.after_switch") == [(7,)]


def test_a_port_another_server_holds_is_given_up_for_another(
    server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs on one machine: the free port this server was given is bound by another
    # run's first. That one answered the readiness check, so the new server counted as up
    # while it could not bind, and its statements ran on the other run's server.
    from qdbpool.testing import _mariadb_server

    ports = iter([server.port])
    real_free_port = _mariadb_server.free_port
    monkeypatch.setattr(
        _mariadb_server, "free_port", lambda *a: next(ports, None) or real_free_port(*a)
    )
    with MariaDBServer(start_timeout=30) as second:
        assert second.port != server.port
        [(datadir,)] = second.sql("SELECT @@datadir")
        assert Path(datadir).resolve() == second.datadir.resolve()


def test_a_port_held_by_a_listener_that_never_answers_costs_no_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A listener that accepts and never greets (a PostgreSQL server waits for its client to
    # speak first) held each readiness probe for PyMySQL's 60 s read timeout: 3 minutes
    # over the port attempts, whatever start_timeout said.
    require_mariadb()
    from qdbpool.testing import _mariadb_server

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        ports = iter([silent.getsockname()[1]])
        real_free_port = _mariadb_server.free_port
        monkeypatch.setattr(
            _mariadb_server, "free_port", lambda *a: next(ports, None) or real_free_port(*a)
        )
        started = time.monotonic()
        with MariaDBServer(start_timeout=20) as srv:
            assert srv.sql("SELECT 1") == [(1,)]
        assert time.monotonic() - started < 20
