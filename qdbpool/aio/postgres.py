"""PostgreSQL for asyncio: psycopg 3 `AsyncConnection`s routed to the primary or a replica
of an HA cluster, by the threaded factory's own topology and router.

What is shared, not copied: the DSN rules, the options, the monitor that checks every host
(a thread of its own, with blocking psycopg probes, so no check ever runs on the event
loop), the balancers, and the generations that make a connection to a demoted host unfit
at its next checkout. What is asyncio's own: the application connections are opened with
`psycopg.AsyncConnection.connect`, and a caller waits for a host of its role without
blocking the loop (qdbpool.aio.routing).
"""

from __future__ import annotations

from typing import Any

from qdbpool.aio.routing import RoutedAioFactory
from qdbpool.dsn import HostPort
from qdbpool.errors import ConfigurationError
from qdbpool.factories import postgres as threaded

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the asyncio Postgres factory needs psycopg 3: pip install 'qdbpool[postgres]'"
    ) from exc


class Postgres(RoutedAioFactory):
    """psycopg 3 `AsyncConnection`s to the primary (or, with `read_only=True`, a replica).

    Args:
        dsn: As for the threaded `qdbpool.factories.Postgres`: a URL or a libpq key/value
            string, one host or several.
        pgbouncer: True when the hosts are PgBouncers in transaction pooling mode (psycopg's
            automatic prepared statements are turned off).
        **options: The routing options (`refresh_delay`, `refresh_timeout`,
            `acquire_timeout`, `fallback_master`, `master_as_replica_weight`, `balancer`,
            `max_replica_lag`), then keywords for every `AsyncConnection.connect`.

    Raises:
        ConfigurationError: As the threaded factory, for the same mistakes; also for
            `driver=`, which is psycopg 3 here (psycopg2 has no asyncio connections).
    """

    def __init__(self, dsn: str, *, pgbouncer: bool = False, **options: Any) -> None:
        if "driver" in options:
            raise ConfigurationError(
                "the asyncio Postgres factory has no driver option: it uses psycopg 3's "
                "AsyncConnection (psycopg2 has no asyncio connections)"
            )
        # The threaded factory validates everything and keeps the cluster's state; it
        # never opens an application connection here.
        routing = threaded.Postgres(dsn, pgbouncer=pgbouncer, **options)
        super().__init__(routing)
        self._driver: Any = routing.host_driver

    async def _open(self, address: HostPort, *, read_only: bool) -> Any:
        kwargs = self._driver.connect_kwargs(address, read_only=read_only)
        return await psycopg.AsyncConnection.connect(**kwargs)

    def _may_be_running(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        # psycopg cancels the statement of a task cancelled mid-query itself, in that
        # task, and waits up to 5 s for its answer; a connection it closed got none.
        return bool(conn.closed)

    async def close_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._routing.forget(conn)
        await conn.close()

    async def ping(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # An empty query in autocommit: a round trip that opens no transaction.
        if conn.autocommit:
            await conn.execute("")
            return
        await conn.set_autocommit(True)
        try:
            await conn.execute("")
        finally:
            await conn.set_autocommit(False)

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.rollback()

    def state_after_use(self, conn: psycopg.AsyncConnection[Any]) -> int:
        return int(self._driver.state_after_use(conn))

    def __repr__(self) -> str:
        return f"qdbpool.aio.factories.{self._routing!r}"
