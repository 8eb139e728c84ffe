"""The PostgreSQL factory over HAProxy's two ports (primary, replicas) in front of a real
Patroni cluster, HAProxy checking each member through Patroni's REST API: one DSN, writes
to the primary port, reads to the replica port, and a failover (kill -9 of the leader's
postmaster) followed without any code in the application."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from qdbpool.cluster import Role
from qdbpool.testing.availability import require_haproxy, require_patroni
from qdbpool.testing.haproxy import HAProxy
from qdbpool.testing.patroni import PatroniCluster

PACE = 0.01
WHERE = "SELECT inet_server_port(), pg_is_in_recovery()"


@pytest.fixture
def proxied(closing: Any, password: str) -> tuple[PatroniCluster, HAProxy]:
    require_patroni()
    require_haproxy()
    cluster: PatroniCluster = closing(PatroniCluster(3, user="app", password=password))
    cluster.start()
    proxy: HAProxy = closing(HAProxy(cluster))
    return cluster, proxy.start()


class Worker:
    """A thread checking out a connection (read-only or not) every 10 ms and noting which
    member answered, whether it was in recovery, or the error."""

    def __init__(self, pool: Any, *, read_only: bool, stop: threading.Event) -> None:
        self.log: list[tuple[float, int | None, bool | None, BaseException | None]] = []
        self.thread = threading.Thread(target=self._run, args=(pool, read_only, stop))
        self.thread.start()

    def _run(self, pool: Any, read_only: bool, stop: threading.Event) -> None:
        for n in range(1_000_000):  # bounded; stop ends it long before
            if stop.is_set():
                return
            began = time.monotonic()
            try:
                with pool.connect(read_only=read_only) as conn:
                    if not read_only:
                        conn.execute("INSERT INTO events VALUES (%s)", (n,))
                    port, in_recovery = conn.execute(WHERE).fetchone()
                    conn.commit()
                self.log.append((began, int(port), bool(in_recovery), None))
            except Exception as exc:
                self.log.append((began, None, None, exc))
            stop.wait(PACE)

    def answered_by(self, port: int, since: float) -> int:
        return sum(1 for began, p, _, _ in list(self.log) if p == port and began >= since)


def test_writes_and_reads_through_haproxy_follow_a_patroni_failover(
    proxied: tuple[PatroniCluster, HAProxy], make_pool: Any, poll: Any
) -> None:
    cluster, proxy = proxied
    pool = make_pool(proxy.dsn(), refresh_delay=0.2)
    pool.factory.ready(1, 1, timeout=10)
    roles = {h.address.port: h.role for h in pool.factory.hosts()}
    assert roles == {proxy.primary_port: Role.PRIMARY, proxy.replica_port: Role.REPLICA}
    with pool.connect() as conn:
        conn.execute("CREATE TABLE events (n int)")
        conn.commit()
    cluster.wait_replicated()

    stop = threading.Event()
    writers = [Worker(pool, read_only=False, stop=stop) for _ in range(2)]
    readers = [Worker(pool, read_only=True, stop=stop) for _ in range(2)]
    try:
        poll(lambda: all(len(w.log) >= 5 for w in writers + readers), what="workers running")
        old = cluster.leader
        since = time.monotonic()
        new = cluster.failover()
        poll(
            lambda: all(w.answered_by(new.port, since) >= 5 for w in writers),
            timeout=20,
            what="every writer writing to the new leader through the primary port",
        )
    finally:
        stop.set()
        for w in writers + readers:
            w.thread.join(15)
    assert not any(w.thread.is_alive() for w in writers + readers), "a worker is stuck"

    for w in writers:
        answered = [(p, rec) for _, p, rec, e in w.log if e is None]
        assert all(rec is False for _, rec in answered), "a write acknowledged in recovery"
        failed = [e for *_, e in w.log if e is not None]
        # While HAProxy's primary port may still lead to a member in recovery (its checks
        # lag Patroni), a new connection there is refused as it opens, before any write.
        assert not [e for e in failed if "read-only transaction" in str(e)], failed
        # The connection HAProxy shut when it marked the old leader down, at most once more
        # while its primary port had no server (no NoHostAvailableError: callers waited).
        assert len(failed) <= 2, failed
        ports = [p for p, _ in answered]
        resumed = ports.index(new.port)
        assert set(ports[:resumed]) == {old.port} and set(ports[resumed:]) == {new.port}
    for r in readers:
        # HAProxy picks a server per connection: for a check interval or so after the
        # promotion, its replica port may still hand a new connection to the new leader
        # (which answered /replica until then). Reads go to replicas otherwise.
        on_leader = [began - since for began, p, rec, e in r.log if e is None and rec is False]
        assert all(0 <= t < 2.0 for t in on_leader), on_leader
        assert sum(1 for _, _, rec, e in r.log if e is None and rec is True) >= 10
        failed = [e for *_, e in r.log if e is not None]
        assert len(failed) <= 1, failed  # the replica that answered may be re-pointed
