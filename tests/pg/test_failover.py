"""Failovers and demotions under load: threads keep calling their @with_conn functions and
never reconnect themselves. Each test has a cluster of its own."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import qdbpool
from qdbpool.cluster import Role

PACE = 0.01  # every worker calls its function every 10 ms


@dataclass(frozen=True)
class Call:
    began: float
    ended: float
    port: int | None
    error: BaseException | None


class Load:
    """Writer threads (INSERT ... RETURNING the server's port) and reader threads (SELECT the
    port) through the global pool's @with_conn, each logging every call."""

    def __init__(self, writers: int, readers: int) -> None:
        self.stop = threading.Event()
        self.writes: list[list[Call]] = [[] for _ in range(writers)]
        self.reads: list[list[Call]] = [[] for _ in range(readers)]

        @qdbpool.with_conn()
        def insert(conn: Any, writer: int, n: int) -> int:
            row = conn.execute(
                "INSERT INTO events VALUES (%s, %s) RETURNING inet_server_port()", (writer, n)
            ).fetchone()
            conn.commit()
            return int(row[0])

        @qdbpool.with_conn(read_only=True)
        def select(conn: Any) -> int:
            return int(conn.execute("SELECT inet_server_port() FROM events LIMIT 1").fetchone()[0])

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
        for n in range(100_000):  # bounded; stop ends it long before
            if self.stop.is_set():
                return
            began = time.monotonic()
            try:
                port, error = (fn() if writer is None else fn(writer, n)), None
            except Exception as exc:
                port, error = None, exc
            log.append(Call(began, time.monotonic(), port, error))
            self.stop.wait(PACE)

    def successes(self, log: list[Call], port: int, after: float = 0.0) -> int:
        return sum(1 for c in list(log) if c.port == port and c.began >= after)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a worker is stuck"


def start_load(c: Any, pool: Any, writers: int, readers: int, poll: Any) -> Load:
    qdbpool.initialize(pool)
    pool.factory.ready(1, 2, timeout=10)
    with pool.connect() as conn:
        conn.execute("CREATE TABLE events (writer int, n int)")
        conn.execute("INSERT INTO events VALUES (-1, -1)")
        conn.commit()
    c.wait_replicated()
    load = Load(writers, readers)
    poll(
        lambda: all(len(log) >= 5 for log in load.writes + load.reads),
        what="every worker running",
    )
    return load


def sqlstate(error: BaseException | None) -> str | None:
    # psycopg 3 names it `sqlstate`, psycopg2 `pgcode`.
    return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


def test_writers_and_readers_carry_on_through_a_failover(
    cluster: Any, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(cluster.multi_host_dsn())
    load = start_load(cluster, pool, writers=3, readers=2, poll=poll)
    try:
        killed_at = time.monotonic()
        new = cluster.failover()  # SIGKILL the primary, promote a standby, re-point the other
        (replica,) = cluster.standbys
        poll(
            lambda: all(load.successes(log, new.port, killed_at) >= 5 for log in load.writes),
            timeout=15,
            what="every writer writing to the new primary",
        )
        poll(
            lambda: all(load.successes(log, replica.port, killed_at) >= 5 for log in load.reads),
            timeout=15,
            what="every reader reading from the remaining replica",
        )
    finally:
        load.close()

    for log in load.writes:
        failed = [c.error for c in log if c.error is not None]
        assert len(failed) <= 1, failed
        resumed = next(i for i, c in enumerate(log) if c.port == new.port)
        assert all(c.port == new.port for c in log[resumed:])
    for log in load.reads:
        assert [c.error for c in log if c.error is not None] == []


def test_a_lost_connection_wakes_the_monitor_instead_of_waiting_for_refresh_delay(
    cluster: Any, make_pool: Any, poll: Any
) -> None:
    pool = make_pool(cluster.multi_host_dsn(), refresh_delay=30.0)
    load = start_load(cluster, pool, writers=1, readers=0, poll=poll)
    try:
        killed_at = time.monotonic()
        new = cluster.failover()
        resumed = poll(
            lambda: next((c for c in list(load.writes[0]) if c.port == new.port), None),
            timeout=15,
            what="a write on the new primary",
        )
    finally:
        load.close()
    # The next scheduled check was ~30 s away: only an immediate re-check finds the new
    # primary this soon.
    assert resumed.ended - killed_at < 5.0


def test_writes_move_to_the_promoted_host_after_a_demotion_with_one_read_only_error_at_most(
    cluster: Any, make_pool: Any, poll: Any, promote_another: Any
) -> None:
    pool = make_pool(cluster.multi_host_dsn())
    load = start_load(cluster, pool, writers=2, readers=0, poll=poll)
    old = cluster.primary
    try:
        old.set_read_only(True)
        new = promote_another(cluster)
        promoted_at = time.monotonic()
        poll(
            lambda: all(load.successes(log, new.port, promoted_at) >= 5 for log in load.writes),
            timeout=15,
            what="every writer writing to the promoted host",
        )
    finally:
        load.close()

    for log in load.writes:
        read_only_errors = [c for c in log if sqlstate(c.error) == "25006"]
        assert len(read_only_errors) <= 1, [c.error for c in read_only_errors]
        other_errors = [c.error for c in log if c.error is not None and c not in read_only_errors]
        assert other_errors == []
        resumed = next(i for i, c in enumerate(log) if c.port == new.port)
        assert all(c.port == new.port for c in log[resumed:])


def test_a_write_never_reaches_a_primary_made_read_only_since_its_last_check(
    cluster: Any, make_pool: Any, status_of: Any, poll: Any, threads: Any, promote_another: Any
) -> None:
    # The next scheduled check is 30 s away: the factory still takes the old primary for
    # one when the writer opens its connection there, as through a proxy port that now
    # leads to a standby. The new session's own report refuses it, not the writer's SQL.
    pool = make_pool(cluster.multi_host_dsn(), refresh_delay=30.0, acquire_timeout=20.0)
    pool.factory.ready(1, 2, timeout=10)
    old = cluster.primary
    old.set_read_only(True)
    assert status_of(pool, old.port).role is Role.PRIMARY
    answered: list[int] = []

    def write() -> None:
        with pool.connect() as conn:
            _, port = conn.execute("SELECT txid_current(), inet_server_port()").fetchone()
            conn.commit()
            answered.append(int(port))

    writer = threads(write)
    poll(
        lambda: status_of(pool, old.port).role is Role.REPLICA,
        what="the refused connection making the factory check the old primary again",
    )
    assert writer.is_alive()  # it waits for a primary
    new = promote_another(cluster)
    writer.join(25)
    assert writer.error is None, writer.error
    assert answered == [new.port]


def test_an_idle_connection_to_a_demoted_primary_is_discarded_at_its_next_checkout(
    cluster: Any,
    make_pool: Any,
    hold: Any,
    status_of: Any,
    poll: Any,
    app_backends: Any,
    promote_another: Any,
) -> None:
    pool = make_pool(cluster.multi_host_dsn())
    pool.factory.ready(1, 2, timeout=10)
    old = cluster.primary
    holder = hold(pool, read_only=False, checked_out=False)  # keeps it idle in its slot
    assert holder.wait_opened() == old.port
    discarded_before = pool.stats().discarded

    old.set_read_only(True)
    new = promote_another(cluster)
    poll(
        lambda: (
            status_of(pool, old.port).role is Role.REPLICA
            and status_of(pool, new.port).role is Role.PRIMARY
        ),
        what="the factory seeing the switchover",
    )

    port, _ = holder.check_out_again()
    assert port == new.port
    assert pool.stats().discarded > discarded_before
    poll(
        lambda: holder.pid not in app_backends(cluster)[old.name],
        what="the old connection closed on the server",
    )
