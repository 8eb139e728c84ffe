"""PostgreSQL: psycopg 3 connections routed to the primary or a replica of an HA cluster.

    Postgres("postgresql://app:secret@db1,db2,db3/app")

A multi-host DSN is watched by a monitor thread; a single-host DSN works the same way (its
one host must be a primary for writes). How one host is talked to is the driver's job
(qdbpool.drivers.psycopg); this module holds the options, their validation and the DSN.
"""

from __future__ import annotations

from typing import Any

from qdbpool.drivers.psycopg import PsycopgDriver, check_connect_kwargs
from qdbpool.dsn import parse_dsn
from qdbpool.errors import ConfigurationError
from qdbpool.factories.routed import RoutedFactory


class Postgres(RoutedFactory):
    """psycopg 3 connections to the primary (or, with `read_only=True`, a replica).

    Args:
        dsn: A URL (`postgresql://user:pw@h1:5432,h2,h3/db?sslmode=...`) or a libpq
            key/value string (`host=h1,h2 port=5432,5433 dbname=db`).
        refresh_delay: Seconds between two rounds of checks of every host.
        refresh_timeout: Seconds a host may take to answer a check; one that does not is
            marked down and the sockets of its connections are shut down.
        acquire_timeout: Seconds a new connection may wait for a host of the wanted role,
            then `NoHostAvailableError`.
        fallback_master: Reads go to the primary while no replica is up.
        master_as_replica_weight: Probability (0 to 1) that the primary competes with
            the replicas for a new read connection.
        balancer: How a replica is picked: "greedy" (the one this process has the fewest
            connections to), "round_robin" or "random_weighted" (by inverse median
            response time).
        max_replica_lag: Seconds; replicas further behind, or whose lag is unknown, serve
            reads only when nothing else can. None: lag is not considered.
        **connect_kwargs: Go to `psycopg.connect` for every connection (psycopg's own
            keywords and libpq options; `connect_timeout` defaults to 2).

    Raises:
        ConfigurationError: A malformed DSN, an unknown libpq option, or an option out of
            range.
    """

    def __init__(
        self,
        dsn: str,
        *,
        refresh_delay: float = 1.0,
        refresh_timeout: float = 1.0,
        acquire_timeout: float = 5.0,
        fallback_master: bool = False,
        master_as_replica_weight: float = 0.0,
        balancer: str = "greedy",
        max_replica_lag: float | None = None,
        **connect_kwargs: Any,
    ) -> None:
        parsed = parse_dsn(dsn)
        if parsed.family != "postgresql":
            raise ConfigurationError(
                f"Postgres needs a postgresql:// DSN or a key/value string, not {parsed.scheme}://"
            )
        check_connect_kwargs(connect_kwargs)
        self.dsn = parsed
        super().__init__(
            parsed.hosts,
            PsycopgDriver(parsed, connect_kwargs),
            refresh_delay=refresh_delay,
            refresh_timeout=refresh_timeout,
            acquire_timeout=acquire_timeout,
            balancer=balancer,
            fallback_master=fallback_master,
            master_as_replica_weight=master_as_replica_weight,
            max_replica_lag=max_replica_lag,
        )

    def __repr__(self) -> str:
        return f"Postgres({self.dsn.to_url(redact=True)!r})"


# Old private names, kept only until qdbpool/cli/drivers.py imports qdbpool.drivers.psycopg.
_PsycopgDriver = PsycopgDriver
_check_connect_kwargs = check_connect_kwargs
