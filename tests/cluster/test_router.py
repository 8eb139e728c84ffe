"""The router's rules on fake host states, with a seeded RNG: no server, no thread.

Each host here is a HostState set by hand as a monitor would set it (role, lag, response
times, connections); the router only reads them.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdbpool.cluster.hosts import HostState
from qdbpool.cluster.options import RoutingOptions
from qdbpool.cluster.router import Router
from qdbpool.drivers.base import Role
from qdbpool.dsn import HostPort

DRAWS = 2000


def host(
    name: str,
    role: Role,
    *,
    lag: float | None = None,
    response_time: float | None = None,
    load: int = 0,
    suspect: bool = False,
) -> HostState:
    state = HostState(HostPort(name, 5432), latency_window=8)
    state.set_role(role, None)
    state.replica_lag = lag
    if response_time is not None:
        state.latencies.append(response_time)
    state.opening = load  # what greedy counts, beside open connections
    state.suspect = suspect
    return state


def router(seed: int = 7, **options: Any) -> Router:
    return Router(RoutingOptions(**options), rng=random.Random(seed))


def picks(r: Router, hosts: list[HostState], draws: int = DRAWS) -> Counter[str | None]:
    chosen = (r.select_replica(hosts) for _ in range(draws))
    return Counter(h.address.host if h is not None else None for h in chosen)


# -- writes ------------------------------------------------------------------------------------


def test_writes_go_to_the_primary_whatever_the_replicas() -> None:
    hosts = [host("r1", Role.REPLICA), host("p", Role.PRIMARY), host("r2", Role.REPLICA)]
    assert router().select_primary(hosts) is hosts[1]


@pytest.mark.parametrize(
    "others",
    [
        [host("p", Role.PRIMARY, suspect=True)],
        [host("p", Role.DOWN), host("r", Role.REPLICA)],
        [host("p", Role.UNKNOWN)],
    ],
    ids=["suspect", "down", "unknown"],
)
def test_no_host_for_writes_without_a_trusted_primary(others: list[HostState]) -> None:
    assert router().select_primary(others) is None


# -- balancers ---------------------------------------------------------------------------------


def test_greedy_picks_the_replica_with_the_fewest_connections() -> None:
    hosts = [
        host("p", Role.PRIMARY),
        host("busy", Role.REPLICA, load=3),
        host("idle", Role.REPLICA, load=1),
    ]
    assert picks(router(), hosts, draws=50) == Counter({"idle": 50})


def test_greedy_breaks_ties_at_random() -> None:
    hosts = [host("r1", Role.REPLICA, load=2), host("r2", Role.REPLICA, load=2)]
    counts = picks(router(), hosts)
    assert abs(counts["r1"] - DRAWS / 2) < DRAWS * 0.05


def test_round_robin_takes_replicas_in_turn_in_address_order() -> None:
    hosts = [host("r3", Role.REPLICA), host("r1", Role.REPLICA), host("r2", Role.REPLICA)]
    r = router(balancer="round_robin")
    chosen = [r.select_replica(hosts) for _ in range(6)]
    assert [h.address.host for h in chosen if h is not None] == ["r1", "r2", "r3"] * 2


def test_random_weighted_picks_in_inverse_proportion_to_response_time() -> None:
    hosts = [
        host("fast", Role.REPLICA, response_time=0.001),
        host("slow", Role.REPLICA, response_time=0.003),
    ]
    counts = picks(router(balancer="random_weighted"), hosts)
    # Weights 1 and 1/3: the fast one takes 3/4 of the reads.
    assert abs(counts["fast"] / DRAWS - 0.75) < 0.05


def test_random_weighted_picks_uniformly_while_a_response_time_is_unknown() -> None:
    hosts = [host("known", Role.REPLICA, response_time=0.001), host("new", Role.REPLICA)]
    counts = picks(router(balancer="random_weighted"), hosts)
    assert abs(counts["new"] / DRAWS - 0.5) < 0.05


# -- master_as_replica_weight ------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(weight=st.floats(min_value=0.0, max_value=1.0))
def test_the_primary_takes_its_share_of_reads_by_master_as_replica_weight(weight: float) -> None:
    # The primary competes with probability `weight`; when it does, greedy draws among two
    # equally loaded hosts: it gets weight / 2 of the reads.
    hosts = [host("p", Role.PRIMARY), host("r", Role.REPLICA)]
    counts = picks(router(master_as_replica_weight=weight), hosts)
    assert abs(counts["p"] / DRAWS - weight / 2) < 0.05
    assert counts[None] == 0


def test_weight_zero_never_sends_a_read_to_the_primary_while_a_replica_is_up() -> None:
    hosts = [host("p", Role.PRIMARY), host("r", Role.REPLICA)]
    assert picks(router(master_as_replica_weight=0.0), hosts) == Counter({"r": DRAWS})


@pytest.mark.parametrize("weight", [0.25, 1.0])
def test_with_no_replica_up_the_primary_takes_reads_as_often_as_it_competes(
    weight: float,
) -> None:
    hosts = [host("p", Role.PRIMARY), host("r", Role.DOWN)]
    counts = picks(router(master_as_replica_weight=weight), hosts)
    assert abs(counts["p"] / DRAWS - weight) < 0.05
    assert counts["p"] + counts[None] == DRAWS


# -- no replica up -----------------------------------------------------------------------------


def test_without_fallback_master_no_host_serves_reads_when_no_replica_is_up() -> None:
    hosts = [host("p", Role.PRIMARY), host("r", Role.DOWN)]
    assert router().select_replica(hosts) is None


def test_fallback_master_sends_reads_to_the_primary_when_no_replica_is_up() -> None:
    hosts = [host("p", Role.PRIMARY), host("r", Role.REPLICA, suspect=True)]
    assert router(fallback_master=True).select_replica(hosts) is hosts[0]


def test_fallback_master_waits_for_a_host_whose_role_is_not_known_yet() -> None:
    # It may well be a replica: the caller waits (bounded) rather than fall back at once.
    hosts = [host("p", Role.PRIMARY), host("r", Role.UNKNOWN)]
    assert router(fallback_master=True).select_replica(hosts) is None


# -- staleness ---------------------------------------------------------------------------------


def test_a_fresh_replica_is_preferred_to_a_stale_one() -> None:
    hosts = [
        host("stale", Role.REPLICA, lag=5.0),
        host("unknown-lag", Role.REPLICA, lag=None),
        host("fresh", Role.REPLICA, lag=0.2),
    ]
    assert picks(router(max_replica_lag=1.0), hosts, draws=50) == Counter({"fresh": 50})


def test_stale_replicas_serve_when_nothing_else_can() -> None:
    hosts = [host("p", Role.DOWN), host("stale", Role.REPLICA, lag=5.0)]
    assert router(max_replica_lag=1.0).select_replica(hosts) is hosts[1]


def test_fallback_master_is_preferred_to_stale_replicas() -> None:
    hosts = [host("p", Role.PRIMARY), host("stale", Role.REPLICA, lag=5.0)]
    assert router(max_replica_lag=1.0, fallback_master=True).select_replica(hosts) is hosts[0]


def test_a_lag_equal_to_max_replica_lag_is_fresh() -> None:
    hosts = [host("edge", Role.REPLICA, lag=1.0), host("stale", Role.REPLICA, lag=1.5)]
    assert router(max_replica_lag=1.0).select_replica(hosts) is hosts[0]


def test_without_max_replica_lag_lag_is_not_considered() -> None:
    hosts = [host("far", Role.REPLICA, lag=3600.0), host("p", Role.PRIMARY)]
    assert router(fallback_master=True).select_replica(hosts) is hosts[0]
