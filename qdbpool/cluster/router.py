"""Routing: which host a new connection goes to, with hasql's knobs and semantics.

- read_only=False goes to the primary.
- read_only=True goes to a replica chosen by the balancer; with probability
  `master_as_replica_weight` the primary competes with the replicas for that connection
  (and, with no replica up, it takes the read). With `fallback_master`, reads go to the
  primary when no replica is up. Replicas lagging more than `max_replica_lag` seconds are
  used only when nothing else can serve.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from qdbpool.cluster.hosts import HostState
from qdbpool.cluster.options import RoutingOptions
from qdbpool.drivers.base import Role


class Router:
    """Picks a host for a new connection among the hosts' current states.

    `rng` drives `master_as_replica_weight` and the random balancers (seeded in tests)."""

    def __init__(self, options: RoutingOptions, rng: random.Random | None = None) -> None:
        self.balancer = options.balancer
        self.fallback_master = options.fallback_master
        self.master_as_replica_weight = options.master_as_replica_weight
        self.max_replica_lag = options.max_replica_lag
        self._rng = rng or random.Random()
        self._turns = itertools.count()  # round_robin; next() on a count is atomic

    def select_primary(self, hosts: Sequence[HostState]) -> HostState | None:
        # Two primaries (a split brain) is for an orchestrator to fix; take the first one.
        # One that an orchestrator said is leaving (held_back) takes no new writes.
        return next(
            (
                h
                for h in hosts
                if h.role is Role.PRIMARY and h.takes_new_connections and not h.held_back
            ),
            None,
        )

    def select_replica(self, hosts: Sequence[HostState]) -> HostState | None:
        primaries = [h for h in hosts if h.role is Role.PRIMARY and h.takes_new_connections]
        replicas = [h for h in hosts if h.role is Role.REPLICA and h.takes_new_connections]
        fresh = [h for h in replicas if self._fresh(h)]
        primary_competes = bool(primaries) and self._rng.random() < self.master_as_replica_weight
        # A host whose role is not known yet (first check, or re-check after a role change)
        # may well be a replica: wait for it (choose() is bounded) rather than fall back.
        undecided = any(h.role is Role.UNKNOWN for h in hosts)
        if fresh:
            candidates = fresh + primaries if primary_competes else fresh
        elif primaries and (self.fallback_master or primary_competes) and not undecided:
            candidates = primaries
        else:
            candidates = replicas  # stale ones, as a last resort (empty when none is up)
        return self._balance(candidates) if candidates else None

    def _fresh(self, host: HostState) -> bool:
        if self.max_replica_lag is None:
            return True
        return host.replica_lag is not None and host.replica_lag <= self.max_replica_lag

    def _balance(self, candidates: list[HostState]) -> HostState:
        if len(candidates) == 1:
            return candidates[0]
        if self.balancer == "round_robin":
            ordered = sorted(candidates, key=lambda h: (h.address.host, h.address.port))
            return ordered[next(self._turns) % len(ordered)]
        if self.balancer == "random_weighted":
            times = [h.response_time for h in candidates]
            if any(t is None or t <= 0 for t in times):
                return self._rng.choice(candidates)
            fastest = min(t for t in times if t is not None)
            weights = [fastest / t for t in times if t is not None]
            return self._rng.choices(candidates, weights=weights)[0]
        # greedy: the host this process has the fewest connections to (counting those
        # being opened, or threads starting together would all pick the same); ties at random.
        fewest = min(h.load for h in candidates)
        return self._rng.choice([h for h in candidates if h.load == fewest])
