"""The HAProxy test bed's own promises: loopback high ports, the primary port reaching the
leader and the replica port a replica (through Patroni's REST checks), stopped by its own
pid with its directory removed, and a clear error for a wrong argument."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from qdbpool.testing.availability import require_haproxy, require_patroni
from qdbpool.testing.haproxy import HAProxy
from qdbpool.testing.patroni import PatroniCluster


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    require_patroni()
    require_haproxy()
    with PatroniCluster(2, user="app", password="secret") as cluster:
        yield cluster


def test_two_ports_on_loopback_reach_the_leader_and_a_replica(patroni: PatroniCluster) -> None:
    with HAProxy(patroni) as proxy:
        assert proxy.host == "127.0.0.1"
        assert 1024 < proxy.primary_port != proxy.replica_port > 1024
        assert proxy.in_recovery(proxy.primary_port) is False
        assert proxy.in_recovery(proxy.replica_port) is True
        assert str(proxy.primary_port) in proxy.dsn() and "secret" in proxy.dsn()
        pid = proxy.pid
        assert pid is not None
        directory = proxy._dir
        assert directory is not None and directory.exists()
    assert proxy.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not directory.exists()


def test_the_recipe_checks_also_route_by_role(patroni: PatroniCluster) -> None:
    with HAProxy(patroni, checks="recipe") as proxy:
        assert proxy.in_recovery(proxy.primary_port) is False
        assert proxy.in_recovery(proxy.replica_port) is True


def test_an_unknown_checks_value_is_named(patroni: PatroniCluster) -> None:
    with pytest.raises(ValueError, match="checks must be 'fast' or 'recipe', not 'slow'"):
        HAProxy(patroni, checks="slow")  # type: ignore[arg-type]
