"""PostgreSQL: psycopg 3 connections routed to the primary or a replica of an HA cluster.

    Postgres("postgresql://app:secret@db1,db2,db3/app")

A multi-host DSN is watched by a monitor thread; a single-host DSN works the same way (its
one host must be a primary for writes). How one host is talked to is the driver's job
(qdbpool.drivers.psycopg); this module holds the options, their validation and the DSN.
"""

from __future__ import annotations

from typing import Any

from qdbpool.cluster.options import RoutingOptions
from qdbpool.drivers.psycopg import PsycopgDriver, check_connect_kwargs
from qdbpool.dsn import parse_dsn
from qdbpool.errors import ConfigurationError
from qdbpool.factories.routed import RoutedFactory


class Postgres(RoutedFactory):
    """psycopg 3 connections to the primary (or, with `read_only=True`, a replica).

    Args:
        dsn: A URL (`postgresql://user:pw@h1:5432,h2,h3/db?sslmode=...`) or a libpq
            key/value string (`host=h1,h2 port=5432,5433 dbname=db`).
        **options: The routing options, by name: `refresh_delay`, `refresh_timeout`,
            `acquire_timeout`, `fallback_master`, `master_as_replica_weight`, `balancer`,
            `max_replica_lag` (see `qdbpool.cluster.options.RoutingOptions`).
            Every other keyword goes to `psycopg.connect` for every connection
            (psycopg's own keywords and libpq options; `connect_timeout` defaults to 2).

    Raises:
        ConfigurationError: A malformed DSN, an unknown libpq option, or an option out of
            range.
    """

    def __init__(self, dsn: str, **options: Any) -> None:
        routing = RoutingOptions.take_from(options)
        connect_kwargs = options
        parsed = parse_dsn(dsn)
        if parsed.family != "postgresql":
            raise ConfigurationError(
                f"Postgres needs a postgresql:// DSN or a key/value string, not {parsed.scheme}://"
            )
        check_connect_kwargs(dict(parsed.params))
        check_connect_kwargs(connect_kwargs)
        self.dsn = parsed
        super().__init__(parsed.hosts, PsycopgDriver(parsed, connect_kwargs), routing)

    def __repr__(self) -> str:
        return f"Postgres({self.dsn.to_url(redact=True)!r})"
