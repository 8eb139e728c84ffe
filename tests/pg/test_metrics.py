"""qdbpool.metrics and pool events on a real cluster through a real failover (SIGKILL of
the primary, a standby promoted): the per-host role gauge moves to the new primary, a
FailoverObserved event names both hosts, and the pool's counters match stats()."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import qdbpool
from qdbpool.drivers.base import Role
from qdbpool.events import Event, FailoverObserved, HostRoleChanged
from qdbpool.metrics import instrument

pytestmark = pytest.mark.postgres

POOL = "db.client.connection.pool.name"


def roles(metrics: Any) -> dict[int, str]:
    """Each host's port and the role its qdbpool.host.role gauge says (the series at 1)."""
    found: dict[int, str] = {}
    for (name, attributes), point in metrics.read().items():
        a = dict(attributes)
        if name == "qdbpool.host.role" and point.value == 1:
            assert a[POOL] == "orders" and a["server.address"] == "127.0.0.1"
            found[int(a["server.port"])] = a["qdbpool.host.role"]
    return found


def value(metrics: Any, name: str, **attributes: str) -> Any:
    return metrics.value(name, {POOL: "orders", **attributes})


@pytest.mark.parametrize("pool_cls", [qdbpool.SingletonPool, qdbpool.BoundedPool])
def test_role_gauge_events_and_counters_through_a_failover(
    cluster: Any, make_pool: Any, poll: Any, pool_cls: type[qdbpool.Pool], metrics: Any
) -> None:
    pool = make_pool(cluster.multi_host_dsn(), pool_cls=pool_cls)
    events: list[Event] = []
    pool.subscribe(events.append)
    instrument(pool, name="orders", meter_provider=metrics.provider)
    try:
        pool.factory.ready()
        old = cluster.primary
        standby_ports = {n.port for n in cluster.standbys}
        assert roles(metrics) == {old.port: "primary", **dict.fromkeys(standby_ports, "replica")}
        assert value(metrics, "qdbpool.host.up", **where(old.port)) == 1
        assert value(metrics, "qdbpool.failovers") == 0
        for port in standby_ports:
            assert value(metrics, "qdbpool.host.replication_lag", **where(port)) >= 0

        # Writers and readers busy through the failover, each with its own thread.
        stop = threading.Event()
        errors: list[BaseException] = []

        def work(read_only: bool) -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    with pool.connect(read_only=read_only) as conn:
                        conn.execute("SELECT 1").fetchone()
                except Exception as exc:  # counted: a failover may cost one per writer
                    errors.append(exc)
                    stop.wait(0.01)

        workers = [threading.Thread(target=work, args=(ro,)) for ro in (False, True) * 2]
        for t in workers:
            t.start()
        try:
            new = cluster.failover()
            poll(
                lambda: roles(metrics).get(new.port) == "primary",
                timeout=15,
                what="the new primary's role gauge",
            )
            poll(lambda: any(isinstance(e, FailoverObserved) for e in events), timeout=15)
        finally:
            stop.set()
            for t in workers:
                t.join(30)
        assert roles(metrics)[new.port] == "primary"
        assert roles(metrics)[old.port] == "down"
        assert value(metrics, "qdbpool.host.up", **where(old.port)) == 0
        assert value(metrics, "qdbpool.failovers") == 1
        [failover] = [e for e in events if isinstance(e, FailoverObserved)]
        assert (failover.old_primary.port, failover.new_primary.port) == (old.port, new.port)
        changes = [(e.host.port, e.new.value) for e in events if isinstance(e, HostRoleChanged)]
        assert (old.port, "down") in changes and (new.port, "primary") in changes
        assert len(errors) <= 2, errors  # at most one per writer thread

        def counts_agree() -> bool:
            # Read again each time: a writer thread that just ended closes its connection
            # (SingletonPool) between a read of the stats and one of the metrics.
            stats = pool.stats()
            closed = sum(
                point.value
                for (name, _), point in metrics.read().items()
                if name == "qdbpool.connection.closed"
            )
            idle = value(
                metrics, "db.client.connection.count", **{"db.client.connection.state": "idle"}
            )
            used = value(
                metrics, "db.client.connection.count", **{"db.client.connection.state": "used"}
            )
            return stats.discarded >= 1 and (
                value(metrics, "qdbpool.connection.created"),
                value(metrics, "qdbpool.connection.checkouts"),
                value(metrics, "qdbpool.connection.discarded"),
                closed,
                idle,
                used,
                value(metrics, "db.client.connection.create_time").count,
            ) == (
                stats.created,
                stats.checkouts,
                stats.discarded,
                stats.closed,
                stats.idle,
                stats.in_use,
                stats.created,
            )

        poll(counts_agree, what="the connection metrics agreeing with stats()")
        assert value(metrics, "qdbpool.host.check.duration", **where(new.port)) > 0
    finally:
        pool.close()


def where(port: int) -> dict[str, str]:
    return {"server.address": "127.0.0.1", "server.port": str(port)}


def test_a_slow_listener_is_not_counted_against_the_hosts_checks(
    cluster: Any, make_pool: Any, poll: Any
) -> None:
    # A listener slower than a check may take (an HTTP alert, say). It ran inside the check
    # that found the change, so that check came back late: the host was marked down, its
    # connections severed, and the next check's "up" emitted again: every host flapped
    # between its role and down for as long as it ran.
    events: list[Event] = []

    def alert(event: Event) -> None:
        events.append(event)
        if isinstance(event, HostRoleChanged):
            time.sleep(0.5)  # the alert's round trip; longer than refresh_timeout

    pool = make_pool(cluster.multi_host_dsn(), refresh_delay=0.1, refresh_timeout=0.3)
    factory = pool.factory
    factory.subscribe(alert)
    with pool.connect() as conn:
        conn.execute("SELECT 1")
    hosts = factory._topology.hosts  # the checks done so far, to wait for more of them
    done = [h.checks for h in hosts]
    poll(
        lambda: all(h.checks >= n + 6 for h, n in zip(hosts, done, strict=True)),
        timeout=30,
        what="six more checks of every host",
    )
    changes = [(e.host.port, e.new) for e in events if isinstance(e, HostRoleChanged)]
    assert len(changes) == len(hosts), changes  # each host found once, never down
    assert all(role is not Role.DOWN for _, role in changes), changes
