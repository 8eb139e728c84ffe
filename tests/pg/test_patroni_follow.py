"""Postgres(dsn, patroni=...) on a real Patroni cluster: the factory follows Patroni's keys in
etcd as well as checking the hosts. Four writer threads keep calling an @with_conn function
through a planned switchover, a failover and the loss of the leader's node.

What following Patroni promises: once a switchover is announced (Patroni's `failover` key,
written some 0.17 s before the old leader shuts down), no new call writes to the old leader,
so no call that starts after the announcement fails; only a transaction already running
there may. The SQL checks stay the judge: no write is ever acknowledged by a server in
recovery. Each test has a Patroni cluster of its own (etcd + 3 members, ~4 s to start)."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest

import qdbpool
from qdbpool.cluster import Role
from qdbpool.dsn import HostPort
from qdbpool.events import Event, HostRoleChanged
from qdbpool.testing.availability import require_patroni
from qdbpool.testing.patroni import PatroniCluster, PatroniMember
from qdbpool.testing.postgres import PostgresCluster

PACE = 0.01  # every writer calls its function every 10 ms
WRITERS = 4


@dataclass(frozen=True)
class Call:
    began: float  # time.monotonic()
    ended: float
    ended_wall: float  # time.time(), to compare with the servers' logs
    port: int | None  # the server that answered, None for a failed call
    in_recovery: bool | None
    error: BaseException | None


class Writers:
    """WRITERS threads, each INSERTing through the global pool every PACE s, every call logged."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.logs: list[list[Call]] = [[] for _ in range(WRITERS)]

        @qdbpool.with_conn()
        def insert(conn: Any, writer: int, n: int) -> tuple[int, bool]:
            row = conn.execute(
                "INSERT INTO events VALUES (%s, %s) "
                "RETURNING inet_server_port(), pg_is_in_recovery()",
                (writer, n),
            ).fetchone()
            conn.commit()
            return int(row[0]), bool(row[1])

        self.threads = [
            threading.Thread(target=self._work, args=(log, insert, i), daemon=True)
            for i, log in enumerate(self.logs)
        ]
        for t in self.threads:
            t.start()

    def _work(self, log: list[Call], insert: Any, writer: int) -> None:
        for n in range(1_000_000):  # bounded; stop ends it long before
            if self.stop.is_set():
                return
            began = time.monotonic()
            try:
                port, in_recovery = insert(writer, n)
                log.append(Call(began, time.monotonic(), time.time(), port, in_recovery, None))
            except Exception as exc:
                log.append(Call(began, time.monotonic(), time.time(), None, None, exc))
            self.stop.wait(PACE)

    def writing_to(self, member: PatroniMember, since: float, count: int = 5) -> bool:
        return all(
            sum(1 for c in list(log) if c.port == member.port and c.began >= since) >= count
            for log in self.logs
        )

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a writer is stuck"

    def check(self, old: PatroniMember, new: PatroniMember, max_failed: int) -> None:
        """Writes went to the old leader, then to the new one only; none was acknowledged by
        a server in recovery; at most `max_failed` failed calls per writer."""
        for log in self.logs:
            assert all(c.in_recovery is False for c in log if c.error is None)
            failed = [c.error for c in log if c.error is not None]
            assert len(failed) <= max_failed, failed
            ports = [c.port for c in log if c.error is None]
            resumed = ports.index(new.port)
            assert set(ports[:resumed]) <= {old.port}
            assert set(ports[resumed:]) == {new.port}


@pytest.fixture
def patroni(closing: Any, password: str) -> PatroniCluster:
    """A fresh Patroni cluster of 3 members (user `app`, with `password`); the test may break it."""
    require_patroni()
    cluster: PatroniCluster = closing(PatroniCluster(3, user="app", password=password))
    return cluster.start()


class HeldBack:
    """When the factory first held `member` back (a primary made unfit by an announcement)."""

    def __init__(self, member: PatroniMember) -> None:
        self.address = HostPort(member.host, member.port)
        self.at: float | None = None
        self.wall: float | None = None

    def __call__(self, event: Event) -> None:
        if (
            self.at is None
            and isinstance(event, HostRoleChanged)
            and event.host == self.address
            and event.old is Role.PRIMARY
            and event.new is Role.UNKNOWN
        ):
            self.at, self.wall = time.monotonic(), time.time()


def start_writers(c: PatroniCluster, pool: Any, poll: Any) -> Writers:
    qdbpool.initialize(pool)
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect() as conn:
        conn.execute("CREATE TABLE events (writer int, n int)")
        conn.commit()
    c.wait_replicated()
    writers = Writers()
    poll(lambda: all(len(log) >= 5 for log in writers.logs), what="every writer running")
    return writers


LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC .*"


def logged_at(member: PatroniMember, message: str, after: float) -> float | None:
    """Wall-clock time of the first line of the member's PostgreSQL log holding `message`
    at or after `after` (ms resolution)."""
    pattern = re.compile(LOG_TIME + re.escape(message))
    for line in member.log_path.read_text(errors="replace").splitlines():
        match = pattern.match(line)
        if match:
            when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f")
            stamp = when.replace(tzinfo=timezone.utc).timestamp()
            if stamp >= after - 0.001:
                return stamp
    return None


def test_no_call_that_starts_after_a_switchover_is_announced_fails(
    patroni: PatroniCluster, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(patroni.multi_host_dsn(), patroni=patroni.patroni_url())
    old = patroni.leader
    held_back = HeldBack(old)
    pool.factory.subscribe(held_back)
    writers = start_writers(patroni, pool, poll)
    try:
        asked, asked_wall = time.monotonic(), time.time()
        new = patroni.switchover()
        poll(lambda: writers.writing_to(new, asked), timeout=20, what=f"writes on {new.name}")
    finally:
        writers.close()

    assert held_back.at is not None and held_back.wall is not None, "no announcement seen"
    # The announcement reached the pool before the old leader began to shut down ...
    shutdown = logged_at(old, "received fast shutdown request", asked_wall)
    assert shutdown is not None
    assert held_back.wall < shutdown
    # ... so the calls that started after it all succeeded: they waited for the new leader.
    calls = [c for log in writers.logs for c in log]
    assert [c.error for c in calls if c.error is not None and c.began >= held_back.at] == []
    # ... and none of them went to the old leader.
    assert all(c.began < held_back.at for c in calls if c.port == old.port)
    writers.check(old, new, max_failed=1)  # at most its transaction in flight, per writer


def test_after_a_failover_the_first_write_follows_the_promotion_closely(
    patroni: PatroniCluster, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(patroni.multi_host_dsn(), patroni=patroni.patroni_url())
    writers = start_writers(patroni, pool, poll)
    old = patroni.leader
    try:
        killed_wall, killed = time.time(), time.monotonic()
        new = patroni.failover()  # kill -9 of its postmaster; primary_start_timeout is 0
        poll(lambda: writers.writing_to(new, killed), timeout=20, what=f"writes on {new.name}")
    finally:
        writers.close()

    writers.check(old, new, max_failed=1)
    promoted = logged_at(new, "database system is ready to accept connections", killed_wall)
    assert promoted is not None
    first = min(c.ended_wall for log in writers.logs for c in log if c.port == new.port)
    assert first - promoted < 1.0, f"first write {first - promoted:.3f}s after the promotion"


def test_writes_carry_on_when_the_leader_node_is_lost(
    patroni: PatroniCluster, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(patroni.multi_host_dsn(), patroni=patroni.patroni_url())
    writers = start_writers(patroni, pool, poll)
    old = patroni.leader
    try:
        lost = time.monotonic()
        old.kill()  # Patroni and PostgreSQL at once: the leader key expires after ttl (5 s)
        new = patroni.wait_leader(30, other_than=old)
        poll(lambda: writers.writing_to(new, lost), timeout=20, what=f"writes on {new.name}")
    finally:
        writers.close()

    # As without Patroni (test_patroni_routing): the lost connection fails one call, and a
    # wait for a primary (acquire_timeout, 5 s) may end just before the promotion.
    writers.check(old, new, max_failed=2)


# -- the watcher's thread -------------------------------------------------------------------------


def watcher_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("qdbpool-patroni")}


@pytest.fixture
def silent_etcd() -> str:
    """A Patroni URL whose etcd does not answer (nothing listens on its port)."""
    from qdbpool.testing._process import free_port

    return f"http://127.0.0.1:{free_port()}/service/none"


def test_with_etcd_silent_writes_go_to_the_primary_the_checks_find(
    module_cluster: PostgresCluster, make_pool: Any, silent_etcd: str
) -> None:
    pool = make_pool(module_cluster.multi_host_dsn(), patroni=silent_etcd)
    with pool.connect() as conn:
        port = conn.execute("SELECT inet_server_port()").fetchone()[0]
    assert port == module_cluster.nodes[0].port


def test_the_watcher_thread_ends_with_close_and_starts_again_on_reuse(
    module_cluster: PostgresCluster, make_pool: Any, silent_etcd: str, poll: Any, closing: Any
) -> None:
    before = watcher_threads()
    pool = make_pool(module_cluster.multi_host_dsn(), patroni=silent_etcd)
    with pool.connect() as conn:
        conn.execute("SELECT 1")
    ours = watcher_threads() - before
    assert len(ours) == 1

    pool.close()
    poll(lambda: not any(t.is_alive() for t in ours), timeout=5, what="watcher ended")

    again = closing(qdbpool.SingletonPool(pool.factory))  # a new pool over the same factory
    with again.connect() as conn:
        conn.execute("SELECT 1")
    assert len(watcher_threads() - before) == 1
    again.close()
    poll(lambda: not (watcher_threads() - before), timeout=5, what="no watcher left")


def _child_watchers(factory: Any, send: Any) -> None:
    try:
        with factory.connect():
            pass
    except Exception as exc:  # the connection itself does not matter here
        send.send(("error", repr(exc)))
        return
    names = [t.name for t in threading.enumerate() if t.name.startswith("qdbpool-patroni")]
    factory.close()
    send.send(("threads", names))


def test_a_forked_child_starts_a_watcher_of_its_own(
    module_cluster: PostgresCluster, pg: Any, closing: Any, silent_etcd: str
) -> None:
    factory = closing(pg.factory(module_cluster.multi_host_dsn(), patroni=silent_etcd))
    factory.ready(1, 0, timeout=10)  # the parent's watcher runs
    assert watcher_threads()
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_watchers, args=(factory, send))
    process.start()
    try:
        assert receive.poll(30), "the child said nothing"
        kind, value = receive.recv()
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
    assert kind == "threads", value
    assert len(value) == 1
    assert process.exitcode == 0


def test_the_asyncio_factory_follows_patroni_too_and_stops_with_close(
    module_cluster: PostgresCluster, silent_etcd: str, poll: Any
) -> None:
    import asyncio

    from qdbpool.aio.factories import Postgres as AsyncPostgres

    before = watcher_threads()

    async def main() -> int:
        factory = AsyncPostgres(module_cluster.multi_host_dsn(), patroni=silent_etcd)
        try:
            conn = await factory.connect()
            try:
                cur = await conn.execute("SELECT inet_server_port()")
                row = await cur.fetchone()
                assert row is not None
                assert len(watcher_threads() - before) == 1
                return int(row[0])
            finally:
                await factory.close_connection(conn)
        finally:
            await factory.close()

    assert asyncio.run(main()) == module_cluster.nodes[0].port
    poll(lambda: not (watcher_threads() - before), timeout=5, what="no watcher left")
