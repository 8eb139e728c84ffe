"""MySQL / MariaDB for asyncio: aiomysql connections routed to the primary or a replica by
the threaded factory's own topology and router.

Why aiomysql: its errors are PyMySQL's own classes, so the threaded driver's judgement of
them (a lost session, a write refused as read-only, a refusal of our settings) applies as
it is; and a task cancelled while it waits for a result closes its connection rather than
leave the answer to be read as the next statement's. The statement itself runs on at the
server until it is killed: the pool does that (`KILL QUERY`, the threaded pool's own
request, from a thread) when it closes a connection whose use was interrupted.

The cluster is watched as for the threaded `qdbpool.factories.MySQL`, by its monitor
thread, with PyMySQL probes (so PyMySQL is installed too: aiomysql depends on it).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from qdbpool.aio.protocol import CLEAN, LOST, NEEDS_RESET
from qdbpool.aio.routing import RoutedAioFactory
from qdbpool.cluster.options import RoutingOptions
from qdbpool.drivers.base import shutdown_socket
from qdbpool.drivers.pymysql import (
    PYMYSQL_CONNECT_KWARGS,
    WRITABLE_QUERY,
    PyMySQLDriver,
    check_writable,
    is_lost_error,
    typed_params,
)
from qdbpool.dsn import HostPort
from qdbpool.errors import ConfigurationError
from qdbpool.factories import mysql as threaded

try:
    import aiomysql
    import pymysql
    from pymysql.constants import CR, SERVER_STATUS
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the asyncio MySQL factory needs aiomysql: pip install 'qdbpool[aiomysql]'"
    ) from exc

_CLOSE_TIMEOUT = 5.0  # a polite close (COM_QUIT) that takes longer ends with the socket

# What aiomysql.connect accepts (`database` is PyMySQL's name for its `db`); its own
# event loop argument is the running one.
_AIOMYSQL_KWARGS = (frozenset(inspect.signature(aiomysql.connect).parameters) - {"loop", "db"}) | {
    "database"
}


class AiomysqlErrors:
    """How the routing tells aiomysql's errors apart (qdbpool.drivers.base.ErrorJudge):
    PyMySQL's classes and numbers, as the threaded driver does; only the connection's own
    state is read differently (aiomysql's `closed`, PyMySQL's `open`)."""

    def __init__(self, driver: PyMySQLDriver) -> None:
        self._driver = driver

    def is_connection_lost(self, conn: Any, exc: BaseException) -> bool:
        return bool(conn.closed) or is_lost_error(exc)

    def is_read_only_violation(self, exc: BaseException) -> bool:
        return self._driver.is_read_only_violation(exc)

    def is_configuration_error(self, exc: BaseException) -> bool:
        return self._driver.is_configuration_error(exc)

    def describe_error(self, exc: BaseException) -> str:
        return self._driver.describe_error(exc)


def _sever_aiomysql(conn: Any) -> None:
    """Shut down the socket of `conn` (from the monitor's thread, its host found stalled),
    so that a task awaiting a result gets an error now rather than never. aiomysql has no
    public handle on its socket: its stream writer's is read (a private attribute) at this
    moment, and a closed connection is left alone."""
    writer = getattr(conn, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else None
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        shutdown_socket(fd)


def _check_aiomysql_options(options: dict[str, Any], where: str) -> None:
    unknown = sorted(set(options) - _AIOMYSQL_KWARGS)
    if unknown:
        raise ConfigurationError(
            f"asyncio MySQL: aiomysql.connect() takes no {where} {', '.join(unknown)}"
        )


class MySQL(RoutedAioFactory):
    """aiomysql connections to the primary (or, with `read_only=True`, a replica).

    Args:
        dsn: As for the threaded `qdbpool.factories.MySQL`: a `mysql://` or `mariadb://`
            URL, one host or several; or None, and the keywords below for one server.
        host: The one server's host (without a DSN).
        port: Its port (default 3306).
        user: The user name.
        password: The password.
        database: The default database.
        **options: The routing options (`refresh_delay`, `refresh_timeout`,
            `acquire_timeout`, `fallback_master`, `master_as_replica_weight`, `balancer`,
            `max_replica_lag`); every other keyword goes to each `aiomysql.connect`
            (`charset`, `autocommit`, `ssl`, ...; `connect_timeout` defaults to 5).

    Raises:
        ConfigurationError: As the threaded factory, for the same mistakes; also for an
            option, or a DSN parameter, that `aiomysql.connect` does not take.
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
        routing_options = RoutingOptions.take_from(options)
        _check_aiomysql_options(options, "argument(s)")
        # The monitor's probes are PyMySQL's: they get the options PyMySQL takes too (the
        # credentials, charset, ssl, ...), the others are aiomysql's alone.
        probe_options = {k: v for k, v in options.items() if k in PYMYSQL_CONNECT_KWARGS}
        # The threaded factory validates the DSN and the routing options and keeps the
        # cluster's state; it never opens an application connection here.
        routing = threaded.MySQL(
            dsn,
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            **probe_options,
            **vars(routing_options),
        )
        _check_aiomysql_options(dict(routing.dsn.params), "DSN parameter(s)")
        driver = routing.host_driver
        assert isinstance(driver, PyMySQLDriver)
        super().__init__(routing, AiomysqlErrors(driver), _sever_aiomysql)
        self._driver = driver
        # aiomysql's alone (the others are in the driver's keywords already), typed once.
        self._aiomysql_options = typed_params(
            {k: v for k, v in options.items() if k not in probe_options}
        )

    def _connect_kwargs(self, address: HostPort) -> dict[str, Any]:
        # The driver's: the DSN's (typed), the options, connect_timeout 5 by default.
        kwargs = self._driver.connect_kwargs(address)
        kwargs.update(self._aiomysql_options)
        if "database" in kwargs:
            kwargs["db"] = kwargs.pop("database")
        return kwargs

    async def _open(self, address: HostPort, *, read_only: bool) -> Any:
        kwargs = self._connect_kwargs(address)
        # aiomysql bounds only the TCP connect by connect_timeout: the server's greeting and
        # the login wait with no limit, so a host that accepts and then says nothing would
        # hold the caller until the pool's own timeout. The whole opening runs under it
        # here. The Connection is made first (aiomysql.connect makes it, then awaits its
        # _connect), so that one cut short is closed now rather than left with its socket.
        conn = aiomysql.Connection(**kwargs)
        timeout = kwargs["connect_timeout"]
        try:
            await asyncio.wait_for(self._handshake(conn, read_only), timeout)
        except asyncio.TimeoutError:  # not yet the built-in TimeoutError on Python 3.10
            conn.close()
            raise pymysql.err.OperationalError(
                CR.CR_CONN_HOST_ERROR, f"no answer from the server within {timeout:g}s"
            ) from None
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    async def _handshake(conn: Any, read_only: bool) -> None:
        await conn._connect()
        if not read_only:  # as the threaded driver does: see check_writable
            async with conn.cursor(aiomysql.Cursor) as cur:
                await cur.execute(WRITABLE_QUERY)
                (flag,) = await cur.fetchone()
            check_writable(flag)

    async def close_connection(self, conn: Any) -> None:
        self._routing.forget(conn)
        try:
            await asyncio.wait_for(conn.ensure_closed(), _CLOSE_TIMEOUT)
        except BaseException:
            conn.close()  # no goodbye: the socket is closed at once
            raise

    async def ping(self, conn: Any) -> None:
        await conn.ping(reconnect=False)

    async def reset(self, conn: Any) -> None:
        await conn.rollback()

    def state_after_use(self, conn: Any) -> int:
        if conn.closed:
            return LOST
        # The server says, with every reply, whether a transaction is open: no I/O here.
        if conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
            return NEEDS_RESET
        return CLEAN

    def __repr__(self) -> str:
        return f"qdbpool.aio.factories.{self._routing!r}"
