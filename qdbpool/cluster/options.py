"""RoutingOptions: how a cluster is watched and its connections routed (hasql's knobs).

Written once here, with their defaults, documentation and validation; `Postgres` and
`MySQL` take them as keyword arguments of the same names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from qdbpool import validation
from qdbpool.errors import ConfigurationError

BALANCERS = ("greedy", "round_robin", "random_weighted")


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """See qdbpool.validation.seconds: one check of seconds for the whole package."""
    return validation.seconds(name, value, zero_ok=allow_zero)


@dataclass(frozen=True)
class RoutingOptions:
    """How `Postgres` and `MySQL` watch the hosts and route connections. Each is given to
    the factory as a keyword argument of the same name, e.g.
    `Postgres(dsn, fallback_master=True, max_replica_lag=5)`.

    Raises ConfigurationError (at the factory's construction) for a value out of range.
    """

    refresh_delay: float = 1.0
    """Seconds between two rounds of checks of every host."""
    refresh_timeout: float = 1.0
    """Seconds a host may take to answer a check; one that does not is marked down and the
    sockets of its connections are shut down."""
    acquire_timeout: float = 5.0
    """Seconds a new connection may wait for a host of the wanted role, then
    `NoHostAvailableError`."""
    fallback_master: bool = False
    """Reads go to the primary while no replica is up."""
    master_as_replica_weight: float = 0.0
    """Probability (0 to 1) that the primary competes with the replicas for a new read
    connection."""
    balancer: str = "greedy"
    """How a replica is picked: "greedy" (the one this process has the fewest connections
    to), "round_robin" or "random_weighted" (by inverse median response time)."""
    max_replica_lag: float | None = None
    """Seconds; replicas further behind, or whose lag is unknown, serve reads only when
    nothing else can. None: lag is not considered."""

    def __post_init__(self) -> None:
        for name in ("refresh_delay", "refresh_timeout", "acquire_timeout"):
            object.__setattr__(self, name, check_seconds(name, getattr(self, name)))
        if self.balancer not in BALANCERS:
            raise ConfigurationError(
                f"balancer must be one of {', '.join(BALANCERS)}, not {self.balancer!r}"
            )
        weight = self.master_as_replica_weight
        if isinstance(weight, bool) or not (
            isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0
        ):
            raise ConfigurationError(
                f"master_as_replica_weight must be a number from 0 to 1, not {weight!r}"
            )
        object.__setattr__(self, "master_as_replica_weight", float(weight))
        object.__setattr__(self, "fallback_master", bool(self.fallback_master))
        if self.max_replica_lag is not None:
            lag = check_seconds("max_replica_lag", self.max_replica_lag, allow_zero=True)
            object.__setattr__(self, "max_replica_lag", lag)

    @classmethod
    def take_from(cls, kwargs: dict[str, Any]) -> RoutingOptions:
        """The options named in `kwargs`, removed from it (the rest go to the driver)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: kwargs.pop(name) for name in names if name in kwargs})
