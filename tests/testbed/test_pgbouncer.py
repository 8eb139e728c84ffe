"""The PgBouncer test bed: a real PgBouncer in transaction pooling mode before a real server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from qdbpool.testing import pgbouncer
from qdbpool.testing._process import ServerUnavailable, process_alive, scratch_root
from qdbpool.testing.availability import require_pgbouncer, require_postgres
from qdbpool.testing.pgbouncer import PgBouncer
from qdbpool.testing.postgres import PostgresCluster

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

PASSWORD = "s3cret/@:% pw"  # awkward on purpose: quoting in the URL and in userlist.txt


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    require_postgres()
    require_pgbouncer()
    with PostgresCluster(standbys=1, user="app", password=PASSWORD) as c:
        yield c


@pytest.fixture
def bouncer(cluster: PostgresCluster) -> Iterator[PgBouncer]:
    with PgBouncer(cluster, pool_size=1) as b:
        yield b


def connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    # Prepared statements do not survive transaction pooling.
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5, prepare_threshold=None)


def test_clients_share_server_connections_between_transactions(bouncer: PgBouncer) -> None:
    with connect(bouncer.dsn()) as a, connect(bouncer.dsn()) as b:
        pids = {conn.execute("SELECT pg_backend_pid()").fetchone() for conn in (a, b, a, b)}
    assert len(pids) == 1  # one server connection (pool_size=1) serves both clients
    config = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
    assert (config["pool_mode"], config["default_pool_size"]) == ("transaction", "1")


def test_role_probes_pass_through(cluster: PostgresCluster, bouncer: PgBouncer) -> None:
    with connect(bouncer.dsn()) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with PgBouncer(cluster, cluster.standbys[0]) as on_standby, connect(on_standby.dsn()) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_a_wrong_password_is_refused(bouncer: PgBouncer) -> None:
    with pytest.raises(psycopg.OperationalError, match="authentication"):
        connect(bouncer.dsn(password="wrong"))


def test_it_listens_on_loopback_only_and_not_as_root(bouncer: PgBouncer) -> None:
    assert bouncer.host == "127.0.0.1" and bouncer.port > 1024
    config = {row["key"]: row["value"] for row in bouncer.show("CONFIG")}
    assert (config["listen_addr"], config["unix_socket_dir"]) == ("127.0.0.1", "")
    uid = int(Path(f"/proc/{bouncer.pid}/status").read_text().split("Uid:")[1].split()[0])
    assert uid != 0  # PgBouncer refuses root; we run it as the postgres OS user


def test_close_stops_it_by_pid_and_removes_its_directory(cluster: PostgresCluster) -> None:
    b = PgBouncer(cluster).start()
    pid, port, directory = b.pid, b.port, b.directory
    assert pid is not None and directory.is_relative_to(scratch_root())
    b.close()
    assert not process_alive(pid) and not directory.exists() and b.pid is None
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    b.close()  # twice is fine


def test_a_failed_start_leaves_nothing_behind(cluster: PostgresCluster) -> None:
    b = PgBouncer(cluster, settings={"no_such_setting": 1})
    with pytest.raises(RuntimeError, match="did not start"):
        b.start()
    assert b.pid is None
    with pytest.raises(RuntimeError, match="not been started"):
        _ = b.directory


def test_pool_size_must_be_positive(cluster: PostgresCluster) -> None:
    with pytest.raises(ValueError, match="pool_size"):
        PgBouncer(cluster, pool_size=0)


# -- when the binary is missing -------------------------------------------------------------


def missing() -> str:
    raise ServerUnavailable("'pgbouncer' is not installed")


def test_a_missing_binary_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbouncer, "find_pgbouncer", missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        require_pgbouncer()


def test_a_missing_binary_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbouncer, "find_pgbouncer", missing)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_pgbouncer()


def test_a_port_another_pgbouncer_holds_is_given_up_for_another(
    cluster: PostgresCluster, bouncer: PgBouncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs on one machine: the free port this PgBouncer was given is bound by another
    # run's before it can bind it. The other one answered the readiness check, so start()
    # returned while its own PgBouncer had exited, and its clients reached that run's server.
    ports = iter([bouncer.port])
    real_free_port = pgbouncer.free_port
    monkeypatch.setattr(
        pgbouncer, "free_port", lambda host: next(ports, None) or real_free_port(host)
    )
    with PgBouncer(cluster, cluster.standbys[0]) as second:
        assert second.port != bouncer.port
        assert second.pid is not None and process_alive(second.pid)
        with connect(second.dsn()) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
