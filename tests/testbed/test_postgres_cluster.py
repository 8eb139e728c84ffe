"""The PostgreSQL test bed: a real streaming-replication cluster on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from qdbpool.testing import postgres
from qdbpool.testing._process import ServerUnavailable, kill_tree, scratch_root, wait_until
from qdbpool.testing.postgres import Node, PostgresCluster, process_alive

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

READ_ONLY_SQL_TRANSACTION = "25006"


def insert_and_wait_visible(writer: Node, readers: list[Node], value: int) -> None:
    writer.sql("CREATE TABLE IF NOT EXISTS t (x int)")
    writer.sql("INSERT INTO t VALUES (%s)", [value])
    for node in readers:
        wait_until(
            lambda node=node: node.sql("SELECT count(*) FROM t WHERE x = %s", [value])[0][0] == 1,
            timeout=10,
            what=f"row {value} on {node.name}",
        )


def streaming_names(node: Node) -> set[str]:
    rows = node.sql("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
    return {row[0] for row in rows}


# -- coming up ---------------------------------------------------------------------------------


def test_cluster_starts_one_primary_and_streaming_standbys(cluster: PostgresCluster) -> None:
    assert cluster.primary is cluster.nodes[0]
    assert [n.role for n in cluster.nodes] == ["primary", "standby", "standby"]
    assert not cluster.primary.is_in_recovery()
    assert all(s.is_in_recovery() for s in cluster.standbys)
    assert streaming_names(cluster.primary) == {"node1", "node2"}


def test_nodes_listen_on_loopback_high_ports_with_data_on_scratch(
    cluster: PostgresCluster,
) -> None:
    ports = {n.port for n in cluster.nodes}
    assert len(ports) == 3
    assert all(p > 1024 and p not in (5432, 3306) for p in ports)
    for node in cluster.nodes:
        assert node.host == "127.0.0.1"
        assert node.sql("SELECT inet_server_port()")[0][0] is None  # Unix socket: the test bed
        assert node.data_dir.is_relative_to(scratch_root())
        assert node.sql("SHOW listen_addresses")[0][0] == "127.0.0.1"


def test_a_second_cluster_starts_quickly_from_the_cached_template(
    require_postgres: Callable[[], Path],
) -> None:
    require_postgres()
    with PostgresCluster(standbys=0):
        pass  # the template now exists, whatever ran before
    started = time.monotonic()
    with PostgresCluster(standbys=2) as c:
        elapsed = time.monotonic() - started
        assert len(c.standbys) == 2
    assert elapsed < 5  # typically 0.3-0.5 s here; generous for slow CI machines


# -- replication -------------------------------------------------------------------------------


def test_a_write_on_the_primary_shows_up_on_every_standby(cluster: PostgresCluster) -> None:
    insert_and_wait_visible(cluster.primary, cluster.standbys, 1)


def test_wait_replicated_covers_asynchronous_commits(cluster: PostgresCluster) -> None:
    cluster.primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x")
    cluster.wait_replicated()
    for standby in cluster.standbys:
        assert standby.sql("SELECT count(*) FROM t")[0][0] == 1000


def test_standbys_refuse_writes(cluster: PostgresCluster) -> None:
    with pytest.raises(errors.ReadOnlySqlTransaction):
        cluster.standbys[0].sql("CREATE TABLE t (x int)")


# -- clients, credentials, URLs ----------------------------------------------------------------


def test_the_client_role_logs_in_with_its_password_on_every_node(
    cluster: PostgresCluster,
) -> None:
    for node in cluster.nodes:
        with psycopg.connect(node.dsn(), connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_a_wrong_password_is_rejected(cluster: PostgresCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cluster.primary.dsn(password="wrong"), connect_timeout=5)


def test_dsn_percent_encodes_the_credentials(cluster: PostgresCluster) -> None:
    node = cluster.primary
    assert node.dsn() == (
        f"postgresql://app:s3cret%2F%40%3A%25%20pw@127.0.0.1:{node.port}/postgres"
    )
    assert node.dsn(password="", dbname="other", connect_timeout=3) == (
        f"postgresql://app@127.0.0.1:{node.port}/other?connect_timeout=3"
    )


def test_multi_host_dsn_lists_every_node_and_finds_the_primary(cluster: PostgresCluster) -> None:
    dsn = cluster.multi_host_dsn(target_session_attrs="read-write")
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
    assert f"@{hosts}/postgres?" in dsn
    cluster.failover(to=cluster.nodes[2])  # the primary is no longer the first host
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        port = conn.execute("SELECT inet_server_port()").fetchone()
    assert port == (cluster.nodes[2].port,)


def test_the_client_role_can_create_tables_and_read_replication_state(
    cluster: PostgresCluster,
) -> None:
    with psycopg.connect(cluster.primary.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (x int)")
        rows = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
    assert sorted(rows) == [("node1", "streaming"), ("node2", "streaming")]


def test_a_database_of_its_own_is_owned_by_the_client_role(
    require_postgres: Callable[[], Path],
) -> None:
    require_postgres()
    with PostgresCluster(standbys=1, user="app", dbname="appdb") as c:
        with psycopg.connect(c.primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE mine (x int)")
        assert c.primary.dsn().endswith("/appdb")
        c.wait_replicated()
        assert c.standbys[0].sql("SELECT count(*) FROM mine")[0][0] == 0


# -- crashes, failover -------------------------------------------------------------------------


def test_kill_ends_the_postmaster_and_all_its_children(cluster: PostgresCluster) -> None:
    primary = cluster.primary
    pids = [primary.pid, *primary.backend_pids()]
    assert len(pids) > 3  # checkpointer, walwriter, walsenders ...
    primary.kill()
    assert primary.pid is None and not primary.running
    # Reaped, not zombies: no /proc entry is left at all.
    assert [pid for pid in pids if pid is not None and Path(f"/proc/{pid}").exists()] == []


def test_a_standby_notices_its_killed_primary(cluster: PostgresCluster) -> None:
    standby = cluster.standbys[0]
    cluster.primary.kill()
    wait_until(
        lambda: (
            standby.sql("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
            == [(0,)]
        ),
        timeout=10,
        what="walreceiver gone",
    )
    assert standby.is_in_recovery()


def test_failover_promotes_a_standby_that_accepts_writes(cluster: PostgresCluster) -> None:
    old, target = cluster.primary, cluster.standbys[0]
    new = cluster.failover(to=target)
    assert new is target is cluster.primary
    assert not new.is_in_recovery()
    assert (old.role, new.role, old.running) == ("retired", "primary", False)
    with psycopg.connect(new.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE after_failover (x int)")


def test_failover_repoints_the_other_standby_to_the_new_primary(
    cluster: PostgresCluster,
) -> None:
    insert_and_wait_visible(cluster.primary, cluster.standbys, 1)
    new = cluster.failover()
    (other,) = cluster.standbys
    assert other.upstream is new
    # failover() returned once it saw the standby stream from the new primary; a loaded
    # machine once showed it not streaming right after (a reconnect, it seems), so the
    # check allows a reconnect and shows the standby's log if it never streams again.
    try:
        wait_until(lambda: streaming_names(new) == {other.name}, timeout=15, interval=0.01)
    except TimeoutError:
        pytest.fail(f"{other.name} not streaming from {new.name}:\n{other.log_tail(30)}")
    insert_and_wait_visible(new, [other], 2)


def test_promote_and_repoint_by_hand(cluster: PostgresCluster) -> None:
    cluster.primary.kill()
    # Promote the standby that received the most: the other can follow only that one (a
    # record the primary wrote in its last moment may have reached one standby only).
    received: dict[Node, int] = {}

    def both_at_the_end() -> bool:
        for node in cluster.standbys:
            position = node.received_from_dead_upstream()
            if position is not None:
                received[node] = position
        return len(received) == 2

    wait_until(both_at_the_end, timeout=10, interval=0.01, what="standbys at the end of the stream")
    a = max(cluster.standbys, key=received.__getitem__)
    b = next(node for node in cluster.standbys if node is not a)
    a.promote()
    assert cluster.primary is a and not a.is_in_recovery()
    b.repoint(a)  # waits until b streams from a
    insert_and_wait_visible(a, [b], 3)


def test_rebuild_standby_brings_a_retired_primary_back(cluster: PostgresCluster) -> None:
    old = cluster.primary
    old_port = old.port
    new = cluster.failover()
    cluster.rebuild_standby(old)
    assert (old.role, old.upstream, old.port) == ("standby", new, old_port)
    assert streaming_names(new) == {"node0", "node1", "node2"} - {new.name}
    insert_and_wait_visible(new, cluster.standbys, 4)


# -- read-only, stop and start ------------------------------------------------------------------


def test_set_read_only_rejects_writes_in_new_and_idle_sessions(cluster: PostgresCluster) -> None:
    primary = cluster.primary
    with psycopg.connect(primary.dsn(), autocommit=True) as idle:
        idle.execute("CREATE TABLE t (x int)")
        primary.set_read_only(True)
        with pytest.raises(errors.ReadOnlySqlTransaction) as caught:
            idle.execute("INSERT INTO t VALUES (1)")
        assert caught.value.sqlstate == READ_ONLY_SQL_TRANSACTION
        fresh = psycopg.connect(primary.dsn(), autocommit=True)
        with fresh, pytest.raises(errors.ReadOnlySqlTransaction):
            fresh.execute("INSERT INTO t VALUES (1)")
        primary.set_read_only(False)
        idle.execute("INSERT INTO t VALUES (1)")


def test_a_stopped_node_starts_again_on_its_port_with_its_data(cluster: PostgresCluster) -> None:
    primary = cluster.primary
    primary.sql("CREATE TABLE kept (x int)")
    port, pid = primary.port, primary.pid
    primary.stop()
    assert not primary.running and pid is not None and not process_alive(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(primary.dsn(), connect_timeout=2)
    primary.start()
    assert primary.port == port and primary.pid != pid
    assert primary.sql("SELECT count(*) FROM kept") == [(0,)]
    cluster.wait_streaming()  # the standbys reconnect by themselves


def test_a_killed_standby_restarts_and_catches_up(cluster: PostgresCluster) -> None:
    standby = cluster.standbys[0]
    standby.kill()
    insert_and_wait_visible(cluster.primary, [cluster.standbys[1]], 5)
    standby.start()
    cluster.wait_streaming()
    cluster.wait_replicated()
    assert standby.sql("SELECT count(*) FROM t WHERE x = 5") == [(1,)]


# -- cleaning up -------------------------------------------------------------------------------


def sysv_segments_created_by(pids: list[int]) -> list[int]:
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return [int(r.split()[1]) for r in rows if int(r.split()[4]) in pids]


def test_a_killed_node_leaves_no_shared_memory_behind(
    require_postgres: Callable[[], Path],
) -> None:
    require_postgres()
    before = set(Path("/dev/shm").iterdir())
    with PostgresCluster(standbys=1) as c:
        assert c.primary.sql("SHOW dynamic_shared_memory_type") == [("mmap",)]
        killed, crashed = c.nodes
        killed_pid, crashed_pid = killed.pid, crashed.pid
        assert killed_pid is not None and crashed_pid is not None
        # A crash leaves the SysV segment for a restart to reclaim; a node the tests kill
        # is not restarted on that segment, so kill() removes it at once ...
        killed.kill()
        assert sysv_segments_created_by([killed_pid]) == []
        # ... and one that died some other way leaves it to close().
        kill_tree(crashed_pid)
        wait_until(lambda: not crashed.running, timeout=10, what="the crashed one reaped")
        assert len(sysv_segments_created_by([crashed_pid])) == 1
    assert sysv_segments_created_by([killed_pid, crashed_pid]) == []
    assert [p for p in set(Path("/dev/shm").iterdir()) - before if "PostgreSQL" in p.name] == []


def test_close_stops_every_process_and_removes_the_data(
    require_postgres: Callable[[], Path],
) -> None:
    require_postgres()
    c = PostgresCluster(standbys=2).start()
    pids = [pid for n in c.nodes for pid in (n.pid, *n.backend_pids()) if pid is not None]
    root = c.root
    c.close()
    assert [pid for pid in pids if process_alive(pid)] == []
    assert not root.exists()
    assert all(n.pid is None for n in c.nodes)
    c.close()  # twice is fine


def test_a_failed_start_leaves_nothing_behind(require_postgres: Callable[[], Path]) -> None:
    require_postgres()
    c = PostgresCluster(standbys=1, settings={"shared_buffers": "not a size"})
    with pytest.raises(RuntimeError, match="did not start"):
        c.start()
    assert not c.root.exists()
    assert all(not n.running for n in c.nodes)
    assert processes_mentioning(str(c.root)) == []


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_servers_of_a_process_killed_without_cleanup_are_swept(
    require_postgres: Callable[[], Path], tmp_path: Path
) -> None:
    require_postgres()
    script = (
        "import sys, time\n"
        "from qdbpool.testing import _watchdog\n"
        "from qdbpool.testing.postgres import PostgresCluster\n"
        "c = PostgresCluster(standbys=0).start()\n"
        "print(c.primary.pid, c.root, _watchdog.watchdog_pid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert child.stdout is not None
        pid_text, root_text, watchdog_text = child.stdout.readline().split()
        # The sweep is the fallback for when the watchdog could not do its job either.
        os.kill(int(watchdog_text), signal.SIGKILL)
        wait_until(lambda: not process_alive(int(watchdog_text)), timeout=5, what="no watchdog")
    finally:
        child.send_signal(signal.SIGKILL)  # no atexit, no close(): the server is orphaned
        child.wait()
    postmaster, root = int(pid_text), Path(root_text)
    assert process_alive(postmaster)
    removed = postgres.sweep_stale_clusters()
    assert root in removed and not root.exists()
    wait_until(lambda: not process_alive(postmaster), timeout=10, what="orphan killed")


# -- when the binaries are missing -------------------------------------------------------------


def missing_binaries() -> Path:
    raise ServerUnavailable("'postgres' is not installed")


def test_missing_binaries_fail_loudly_under_ci(
    require_postgres: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "find_postgres_bindir", missing_binaries)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        require_postgres()


def test_missing_binaries_skip_locally(
    require_postgres: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "find_postgres_bindir", missing_binaries)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_postgres()
