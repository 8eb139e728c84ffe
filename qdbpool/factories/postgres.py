"""PostgreSQL: psycopg 3 (or psycopg2) connections routed to the primary or a replica of an
HA cluster.

    Postgres("postgresql://app:secret@db1,db2,db3/app")
    Postgres("postgresql://app:secret@db1,db2,db3/app", driver="psycopg2")
    Postgres("postgresql://app:secret@bouncer1,bouncer2/app", pgbouncer=True)

A multi-host DSN is watched by a monitor thread; a single-host DSN works the same way (its
one host must be a primary for writes). How one host is talked to is the driver's job
(qdbpool.drivers.psycopg, qdbpool.drivers.psycopg2); this module holds the options, their
validation and the DSN.
"""

from __future__ import annotations

from typing import Any

from qdbpool.cluster.options import RoutingOptions
from qdbpool.cluster.patroni import PatroniSource, PatroniWatcher
from qdbpool.drivers.base import HostDriver
from qdbpool.dsn import ParsedDSN, parse_dsn
from qdbpool.errors import ConfigurationError
from qdbpool.factories.routed import Choice, RoutedFactory
from qdbpool.validation import seconds

DRIVERS = ("psycopg", "psycopg2")


class Postgres(RoutedFactory):
    """psycopg 3 (or psycopg2) connections to the primary (or, with `read_only=True`, a
    replica).

    Args:
        dsn: A URL (`postgresql://user:pw@h1:5432,h2,h3/db?sslmode=...`) or a libpq
            key/value string (`host=h1,h2 port=5432,5433 dbname=db`).
        driver: The client library the connections are made with: `"psycopg"` (psycopg 3,
            the default) or `"psycopg2"`. Both get the same routing, validation, reset,
            cancellation and fork rules; the pool hands out that library's connection
            objects (`psycopg.Connection` or `psycopg2.extensions.connection`).
        pgbouncer: True when the hosts of `dsn` are PgBouncers in transaction (or
            statement) pooling mode: each transaction may then run on another server
            session, so nothing that lives in a session may be relied on. With psycopg 3
            this turns off its automatic prepared statements (`prepare_threshold=None`),
            which fail there ("prepared statement ... does not exist"); psycopg2 prepares
            nothing by itself. The role checks need nothing: each is one statement, run
            in autocommit.
        patroni: Optional: follow Patroni as well as checking the hosts, given as the URL of
            the etcd (v3) that Patroni uses followed by its namespace and scope, e.g.
            `"http://etcd1:2379,etcd2:2379/service/batman"`. A thread reads Patroni's keys
            every `patroni_interval` seconds (0.05 by default): on a leader change the
            hosts are checked again at once, and a planned switchover, announced before
            the old leader shuts down, stops new connections for writes to it; writers
            wait until the checks find the new primary (`qdbpool.cluster.patroni`).
        **options: The routing options, by name: `refresh_delay`, `refresh_timeout`,
            `acquire_timeout`, `fallback_master`, `master_as_replica_weight`, `balancer`,
            `max_replica_lag` (see `qdbpool.cluster.options.RoutingOptions`).
            Every other keyword goes to the driver's `connect` for every connection
            (the library's own keywords, such as psycopg's `row_factory` or psycopg2's
            `cursor_factory`, and libpq options; `connect_timeout` defaults to 2).

    The driver is a keyword of this one factory, rather than a factory of its own, because
    everything else (DSN, routing options, `ready()`, `hosts()`) is the same: moving from
    one library to the other is one argument, as SQLAlchemy's `postgresql+psycopg2://` is.

    Raises:
        ConfigurationError: A malformed DSN, an unknown driver or libpq option, an option
            out of range, or `prepare_threshold` given with `pgbouncer=True`.
        ImportError: The chosen driver's library is not installed.
    """

    def __init__(
        self,
        dsn: str,
        *,
        driver: str = "psycopg",
        pgbouncer: bool = False,
        patroni: str | None = None,
        patroni_interval: float = 0.05,
        **options: Any,
    ) -> None:
        if driver not in DRIVERS:
            raise ConfigurationError(
                f"Postgres: driver must be one of {', '.join(map(repr, DRIVERS))}, not {driver!r}"
            )
        if not isinstance(pgbouncer, bool):
            raise ConfigurationError(
                f"Postgres: pgbouncer must be True or False, not {pgbouncer!r}"
            )
        interval = seconds("patroni_interval", patroni_interval)  # checked even if unused
        source = None if patroni is None else PatroniSource.parse(patroni, interval)
        routing = RoutingOptions.take_from(options)
        connect_kwargs = options
        parsed = parse_dsn(dsn)
        if parsed.family != "postgresql":
            raise ConfigurationError(
                f"Postgres needs a postgresql:// DSN or a key/value string, not {parsed.scheme}://"
            )
        if pgbouncer and driver == "psycopg":
            if connect_kwargs.get("prepare_threshold") is not None:
                raise ConfigurationError(
                    "Postgres: prepare_threshold must be None with pgbouncer=True "
                    "(prepared statements do not survive PgBouncer's transaction pooling)"
                )
            connect_kwargs["prepare_threshold"] = None
        self.dsn = parsed
        self.driver = driver
        self.pgbouncer = pgbouncer
        super().__init__(
            parsed.hosts, _make_driver(driver, parsed, connect_kwargs, pgbouncer=pgbouncer), routing
        )
        self._patroni = None if source is None else PatroniWatcher(source, self._topology)

    def connect(self, *, read_only: bool = False) -> Any:
        if self._patroni is not None:
            self._patroni.start()
        return super().connect(read_only=read_only)

    def try_choose(self, read_only: bool) -> Choice | None:
        # The asyncio factory's way in (qdbpool.aio.postgres): the watcher starts there too.
        if self._patroni is not None:
            self._patroni.start()
        return super().try_choose(read_only)

    def ready(
        self,
        masters_count: int | None = None,
        replicas_count: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        if self._patroni is not None:
            self._patroni.start()
        super().ready(masters_count, replicas_count, timeout)

    def close(self) -> None:
        """Stop the monitor (and the Patroni watcher) and close its probes; see
        RoutedFactory.close."""
        if self._patroni is not None:
            self._patroni.stop()
        super().close()

    def __repr__(self) -> str:
        extra = "" if self.driver == "psycopg" else f", driver={self.driver!r}"
        if self.pgbouncer:
            extra += ", pgbouncer=True"
        if self._patroni is not None:
            extra += f", patroni={str(self._patroni.source)!r}"
        return f"Postgres({self.dsn.to_url(redact=True)!r}{extra})"


def _make_driver(
    driver: str, parsed: ParsedDSN, connect_kwargs: dict[str, Any], *, pgbouncer: bool
) -> HostDriver:
    # Imported here: a user of one library need not install the other.
    if driver == "psycopg2":
        from qdbpool.drivers import psycopg2 as v2

        v2.check_connect_kwargs(dict(parsed.params), from_dsn=True)
        v2.check_connect_kwargs(connect_kwargs)
        return v2.Psycopg2Driver(parsed, connect_kwargs, pgbouncer=pgbouncer)
    from qdbpool.drivers import psycopg as v3

    v3.check_connect_kwargs(dict(parsed.params), from_dsn=True)
    v3.check_connect_kwargs(connect_kwargs)
    return v3.PsycopgDriver(parsed, connect_kwargs)
