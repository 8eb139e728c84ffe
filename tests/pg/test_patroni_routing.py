"""The PostgreSQL factory, unchanged (multi-host DSN, SQL probing, default options), on a real
Patroni cluster: writer and reader threads keep calling their @with_conn functions through a
switchover, a failover, the loss of the leader's node and its rejoining as a replica.

Each test has a Patroni cluster of its own (etcd + 3 members, started in about 4 s)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

import qdbpool
from qdbpool.testing.availability import require_patroni
from qdbpool.testing.patroni import PatroniCluster, PatroniMember

PACE = 0.01  # every worker calls its function every 10 ms


@dataclass(frozen=True)
class Call:
    began: float
    ended: float
    port: int | None  # the server that answered, None for a failed call
    in_recovery: bool | None  # what that server said of itself in the same statement
    error: BaseException | None


class Load:
    """Writer threads (INSERT ... RETURNING the server's port and pg_is_in_recovery()) and
    reader threads (SELECT the same) through the global pool's @with_conn; every call logged."""

    def __init__(self, writers: int, readers: int) -> None:
        self.stop = threading.Event()
        self.writes: list[list[Call]] = [[] for _ in range(writers)]
        self.reads: list[list[Call]] = [[] for _ in range(readers)]

        @qdbpool.with_conn()
        def insert(conn: Any, writer: int, n: int) -> tuple[int, bool]:
            row = conn.execute(
                "INSERT INTO events VALUES (%s, %s) "
                "RETURNING inet_server_port(), pg_is_in_recovery()",
                (writer, n),
            ).fetchone()
            conn.commit()
            return int(row[0]), bool(row[1])

        @qdbpool.with_conn(read_only=True)
        def select(conn: Any) -> tuple[int, bool]:
            row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
            return int(row[0]), bool(row[1])

        self.threads = [
            threading.Thread(target=self._work, args=(log, insert, i), daemon=True)
            for i, log in enumerate(self.writes)
        ] + [
            threading.Thread(target=self._work, args=(log, select, None), daemon=True)
            for log in self.reads
        ]
        for t in self.threads:
            t.start()

    def _work(self, log: list[Call], fn: Any, writer: int | None) -> None:
        for n in range(1_000_000):  # bounded; stop ends it long before
            if self.stop.is_set():
                return
            began = time.monotonic()
            try:
                port, in_recovery = fn() if writer is None else fn(writer, n)
                log.append(Call(began, time.monotonic(), port, in_recovery, None))
            except Exception as exc:
                log.append(Call(began, time.monotonic(), None, None, exc))
            self.stop.wait(PACE)

    def successes(self, log: list[Call], ports: set[int], after: float) -> int:
        return sum(1 for c in list(log) if c.port in ports and c.began >= after)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a worker is stuck"


@pytest.fixture
def patroni(closing: Any, password: str) -> PatroniCluster:
    """A fresh Patroni cluster of 3 members (user `app`, with `password`); the test may break it."""
    require_patroni()
    cluster: PatroniCluster = closing(PatroniCluster(3, user="app", password=password))
    return cluster.start()


def start_load(c: PatroniCluster, pool: Any, poll: Any, writers: int = 3, readers: int = 2) -> Load:
    qdbpool.initialize(pool)
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect() as conn:
        conn.execute("CREATE TABLE events (writer int, n int)")
        conn.commit()
    c.wait_replicated()
    load = Load(writers, readers)
    poll(
        lambda: all(len(log) >= 5 for log in load.writes + load.reads),
        what="every worker running",
    )
    return load


def wait_writes_and_reads(
    load: Load, leader: PatroniMember, replicas: set[int], since: float, poll: Any
) -> None:
    poll(
        lambda: all(load.successes(log, {leader.port}, since) >= 5 for log in load.writes),
        timeout=20,
        what=f"every writer writing to {leader.name}",
    )
    poll(
        lambda: all(load.successes(log, replicas, since) >= 5 for log in load.reads),
        timeout=20,
        what="every reader reading from a replica",
    )


def check_writes(load: Load, old: PatroniMember, new: PatroniMember, max_failed: int) -> None:
    """Writes went to the old leader, then to the new one only; no write was acknowledged by
    a server in recovery; at most `max_failed` failed calls per writer."""
    for log in load.writes:
        assert all(c.in_recovery is False for c in log if c.error is None)
        failed = [c.error for c in log if c.error is not None]
        assert len(failed) <= max_failed, failed
        ports = [c.port for c in log if c.error is None]
        resumed = ports.index(new.port)
        assert set(ports[:resumed]) <= {old.port}
        assert set(ports[resumed:]) == {new.port}


def check_reads(load: Load, max_failed: int) -> None:
    for log in load.reads:
        failed = [c.error for c in log if c.error is not None]
        assert len(failed) <= max_failed, failed


def acknowledged(load: Load) -> dict[int, int]:
    """How many writes each writer had acknowledged."""
    return {i: sum(1 for c in log if c.error is None) for i, log in enumerate(load.writes)}


def test_writes_and_reads_follow_a_patroni_switchover(
    patroni: PatroniCluster, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(patroni.multi_host_dsn())
    load = start_load(patroni, pool, poll)
    old = patroni.leader
    try:
        since = time.monotonic()
        new = patroni.switchover()
        replicas = {m.port for m in patroni.members if m is not new}  # the old leader included
        wait_writes_and_reads(load, new, replicas, since, poll)
    finally:
        load.close()

    check_writes(load, old, new, max_failed=1)
    check_reads(load, max_failed=1)
    # A planned switchover loses nothing: the old leader's last WAL reached the new one.
    # (A call that failed may have committed before its connection went.)
    rows = dict(new.sql("SELECT writer, count(*) FROM events GROUP BY writer"))
    for writer, count in acknowledged(load).items():
        failed = sum(1 for c in load.writes[writer] if c.error is not None)
        assert count <= rows.get(writer, 0) <= count + failed


def test_writes_and_reads_follow_a_failover_when_the_leader_postgres_is_killed(
    patroni: PatroniCluster, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(patroni.multi_host_dsn())
    load = start_load(patroni, pool, poll)
    old = patroni.leader
    try:
        since = time.monotonic()
        new = patroni.failover()  # kill -9 of its postmaster; primary_start_timeout is 0
        others = {m.port for m in patroni.members if m is not new and m is not old}
        wait_writes_and_reads(load, new, others, since, poll)
    finally:
        load.close()

    check_writes(load, old, new, max_failed=1)
    check_reads(load, max_failed=1)


def test_writes_and_reads_carry_on_when_the_leader_node_is_lost_and_it_rejoins_as_a_replica(
    patroni: PatroniCluster, make_pool: Any, poll: Any, read_port_in_new_thread: Any
) -> None:
    pool = make_pool(patroni.multi_host_dsn())
    load = start_load(patroni, pool, poll)
    old = patroni.leader
    try:
        since = time.monotonic()
        old.kill()  # Patroni and PostgreSQL at once: the leader key expires after ttl (5 s)
        new = patroni.wait_leader(30, other_than=old)
        others = {m.port for m in patroni.members if m is not new and m is not old}
        wait_writes_and_reads(load, new, others, since, poll)

        old.start()  # rejoins as a replica (pg_rewind, or a fresh clone)
        assert old.is_in_recovery()
        rejoined = time.monotonic()
        # A new thread's read goes to the replica it has the fewest connections to: the
        # rejoined one, once the factory sees it up.
        poll(
            lambda: read_port_in_new_thread(pool) == old.port,
            timeout=20,
            what="a read on the rejoined old leader",
        )
        poll(
            lambda: all(load.successes(log, {new.port}, rejoined) >= 5 for log in load.writes),
            timeout=10,
            what="writes still on the new leader",
        )
    finally:
        load.close()

    # The lost connection fails one call. The leader key outlives the node by up to ttl
    # (5 s), and the next call waits for a primary for acquire_timeout (5 s, the default):
    # that wait may end just before the promotion, one more failed call (NoHostAvailableError).
    check_writes(load, old, new, max_failed=2)
    check_reads(load, max_failed=1)
