"""The Patroni test bed (qdbpool.testing.patroni): etcd and Patroni members on 127.0.0.1,
every process stopped by its own pid, also when the process that started them is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qdbpool.testing import patroni as patroni_module
from qdbpool.testing._process import (
    ServerUnavailable,
    become_subreaper,
    children,
    process_alive,
    reap,
)
from qdbpool.testing.availability import require_patroni
from qdbpool.testing.patroni import PatroniCluster

pytestmark = pytest.mark.timeout(120)

APP_PASSWORD = "s3cret/@:% pw"
DEFAULT_PORTS = {5432, 2379, 2380, 8008}  # PostgreSQL, etcd client and peer, Patroni's API


@pytest.fixture(scope="module")
def shared() -> Iterator[PatroniCluster]:
    """Three members shared by the tests that leave the cluster healthy."""
    require_patroni()
    with PatroniCluster(3, user="app", password=APP_PASSWORD) as c:
        yield c


def all_pids(c: PatroniCluster) -> set[int]:
    """etcd, each member's supervisor and its children: Patroni and the (orphaned) postmaster."""
    pids = {c.etcd.pid} if c.etcd.pid is not None else set()
    for member in c.members:
        assert member._proc is not None and member.postmaster_pid is not None
        pids |= {member._proc.pid, *children(member._proc.pid)}
        assert member.postmaster_pid in pids
    return pids


def test_a_cluster_has_one_leader_and_replicas_streaming_from_it(shared: PatroniCluster) -> None:
    leader = shared.leader
    assert len(shared.replicas) == 2 and leader not in shared.replicas
    assert not leader.is_in_recovery()
    for member in shared.replicas:
        assert member.is_in_recovery() and member.streaming_from(leader)
        assert member.role == "replica"
    assert leader.role == "leader"


def test_everything_listens_on_loopback_high_ports(shared: PatroniCluster) -> None:
    ports = {shared.etcd.client_port, shared.etcd.peer_port}
    for member in shared.members:
        ports |= {member.port, member.api_port}
        assert member.host == "127.0.0.1"
    assert len(ports) == 2 + 2 * len(shared.members)
    assert not ports & DEFAULT_PORTS and min(ports) > 1024


def test_the_multi_host_dsn_logs_in_as_the_app_user_with_its_password(
    shared: PatroniCluster,
) -> None:
    with psycopg.connect(shared.multi_host_dsn(), target_session_attrs="read-write") as conn:
        row = conn.execute("SELECT current_user, inet_server_port()").fetchone()
    assert row == ("app", shared.leader.port)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(shared.leader.dsn(password="wrong"), connect_timeout=5).close()


def test_sql_runs_on_the_leader_and_replicates(shared: PatroniCluster) -> None:
    shared.sql("CREATE TABLE IF NOT EXISTS replicated (x int)")
    shared.sql("INSERT INTO replicated VALUES (1)")
    shared.wait_replicated()
    for member in shared.replicas:
        assert member.sql("SELECT count(*) FROM replicated")[0][0] >= 1


def test_a_killed_replica_postmaster_is_restarted_in_place(shared: PatroniCluster) -> None:
    leader = shared.leader
    replica = shared.replicas[0]
    killed = replica.kill_postmaster()
    shared.wait_healthy(30)
    assert shared.leader is leader
    assert replica.postmaster_pid not in (None, killed)
    assert replica.streaming_from(leader)


def test_a_switchover_to_a_chosen_member_leaves_the_old_leader_a_replica(
    shared: PatroniCluster,
) -> None:
    old = shared.leader
    target = shared.replicas[-1]
    assert shared.switchover(to=target) is target
    shared.wait_healthy(30)
    assert shared.leader is target
    assert old.is_in_recovery() and old.streaming_from(target)


def test_a_reinitialized_replica_streams_again_from_a_fresh_copy(shared: PatroniCluster) -> None:
    replica = shared.replicas[0]
    before = replica.postmaster_pid
    replica.reinitialize()
    assert replica.postmaster_pid not in (None, before)
    assert replica.streaming_from(shared.leader)


def test_close_stops_every_process_and_removes_the_directory() -> None:
    require_patroni()
    c = PatroniCluster(1).start()
    pids = all_pids(c)
    root = c.root
    assert len(pids) == 1 + 3 and all(process_alive(pid) for pid in pids)
    c.close()
    assert not any(process_alive(pid) for pid in pids)
    assert not root.exists()
    c.close()  # twice is fine


def test_a_stopped_leader_hands_over_and_rejoins_when_started_again() -> None:
    require_patroni()
    with PatroniCluster(2) as c:
        old = c.leader
        old.stop()  # clean: Patroni gives up the leader key at once (no ttl to wait for)
        assert old.postmaster_pid is None and not old.running
        new = c.wait_leader(30, other_than=old)
        old.start()
        assert old.is_in_recovery() and old.streaming_from(new)


# -- the process that started the cluster is killed ------------------------------------------

STARTER = """
from qdbpool.testing._process import children
from qdbpool.testing.patroni import PatroniCluster
c = PatroniCluster(1).start()
pids = [c.etcd.pid]  # and each supervisor, its Patroni and its postmaster
for m in c.members:
    pids += [m._proc.pid, *children(m._proc.pid)]
print(c.root, *pids, flush=True)
import time
time.sleep(60)
"""


@pytest.fixture
def starter_reaper() -> Iterator[list[int]]:
    """Pids the killed starter orphaned, which come back to us: reaped at the end."""
    become_subreaper()
    orphans: list[int] = []
    yield orphans
    reap(orphans, timeout=5)


def test_a_killed_starter_takes_its_cluster_with_it(starter_reaper: list[int], poll: Any) -> None:
    require_patroni()
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert starter.stdout is not None
        root_text, *pid_texts = starter.stdout.readline().split()
        root, pids = Path(root_text), [int(p) for p in pid_texts]
        assert root.is_dir() and all(process_alive(pid) for pid in pids)
        starter_reaper += [*pids, *children(starter.pid)]
    finally:
        starter.send_signal(signal.SIGKILL)  # no atexit, no close()
        starter.wait()
    poll(lambda: not any(process_alive(pid) for pid in pids), timeout=15, what="all gone")
    poll(lambda: not root.exists(), timeout=5, what="directory removed")


# -- missing binaries --------------------------------------------------------------------------


def missing() -> Any:
    raise ServerUnavailable("'patroni' is not installed")


def test_missing_patroni_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patroni_module, "find_patroni", missing)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="patroni"):
        require_patroni()


def test_missing_patroni_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patroni_module, "find_patroni", missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="patroni"):
        require_patroni()


def test_a_cluster_cannot_be_made_without_the_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patroni_module, "find_patroni", missing)
    with pytest.raises(ServerUnavailable):
        PatroniCluster(1)
