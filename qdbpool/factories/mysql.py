"""MySQL / MariaDB: PyMySQL connections, routed to the primary or a replica like Postgres.

    MySQL("mysql://app:secret@db1:3306,db2/app?charset=utf8mb4")
    MySQL(host="127.0.0.1", port=3306, user="app", password="secret", database="app")

How one host is talked to (roles, lag, lost connections) is the driver's job
(qdbpool.drivers.pymysql); this module holds the options, their validation and the DSN.
"""

from __future__ import annotations

from typing import Any

from qdbpool.cluster.options import RoutingOptions
from qdbpool.drivers.pymysql import PyMySQLDriver, check_options
from qdbpool.dsn import DEFAULT_PORTS, HostPort, ParsedDSN, parse_dsn
from qdbpool.errors import ConfigurationError
from qdbpool.factories.routed import RoutedFactory


class MySQL(RoutedFactory):
    """PyMySQL connections to the primary (or, with `read_only=True`, a replica).

    Give a DSN (`mysql://user:pw@h1:3306,h2/db?charset=utf8mb4`, several hosts allowed),
    or `host`/`port`/`user`/`password`/`database` for one server. Other keyword
    arguments go to `pymysql.connect` for every connection. Replica lag is read from the
    replication status only when `max_replica_lag` is set.

    Args:
        dsn: A `mysql://` or `mariadb://` URL, or None to use the keywords below.
        host: The one server's host (without a DSN).
        port: Its port (default 3306).
        user: The user name.
        password: The password.
        database: The default database.
        **options: The routing options, by name: `refresh_delay`, `refresh_timeout`,
            `acquire_timeout`, `fallback_master`, `master_as_replica_weight`, `balancer`,
            `max_replica_lag` (see `qdbpool.cluster.options.RoutingOptions`).
            Every other keyword goes to `pymysql.connect` for every connection
            (`connect_timeout` defaults to 5).

    Raises:
        ConfigurationError: A malformed DSN, both a DSN and keywords, an argument
            `pymysql.connect` does not take, or an option out of range.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        **options: Any,
    ) -> None:
        routing = RoutingOptions.take_from(options)
        connect_kwargs = options
        check_options(connect_kwargs, "argument(s)")
        parsed = self._parse(dsn, host, port, user, password, database)
        check_options(dict(parsed.params), "DSN parameter(s)")
        self.dsn = parsed
        check_lag = routing.max_replica_lag is not None
        super().__init__(parsed.hosts, PyMySQLDriver(parsed, connect_kwargs, check_lag), routing)

    @staticmethod
    def _parse(
        dsn: str | None,
        host: str | None,
        port: int | None,
        user: str | None,
        password: str | None,
        database: str | None,
    ) -> ParsedDSN:
        if dsn is not None:
            if any(v is not None for v in (host, port, user, password, database)):
                raise ConfigurationError(
                    "give either a DSN or host/port/user/password/database, not both"
                )
            parsed = parse_dsn(dsn)
            if parsed.family != "mysql":
                raise ConfigurationError(
                    f"MySQL needs a mysql:// (or mariadb://) DSN, not {parsed.scheme}://"
                )
            return parsed
        if host is None:
            raise ConfigurationError("MySQL needs a DSN or a host")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
        return ParsedDSN(
            scheme="mysql",
            hosts=(HostPort(host, port or DEFAULT_PORTS["mysql"]),),
            user=user,
            password=password,
            database=database,
        )

    def __repr__(self) -> str:
        return f"MySQL({self.dsn.to_url(redact=True)!r})"
