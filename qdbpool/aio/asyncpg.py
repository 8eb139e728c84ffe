"""PostgreSQL for asyncio over asyncpg: `asyncpg.Connection`s routed to the primary or a
replica of an HA cluster by the same topology and router as every other PostgreSQL factory.

The cluster is watched as for `qdbpool.aio.factories.Postgres`: by the threaded factory's
monitor, a thread of its own whose role checks use psycopg (so this factory needs psycopg
installed beside asyncpg). Only the application connections are asyncpg's: opened with
`asyncpg.connect` (with `target_session_attrs="read-write"` for writes, so that a host
that changed role since its last check fails the connect, not the caller's first write),
their errors told apart by asyncpg's exception classes and SQLSTATEs.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from qdbpool.aio.protocol import CLEAN, LOST, NEEDS_RESET
from qdbpool.aio.routing import CancelSender, RoutedAioFactory
from qdbpool.cluster.options import RoutingOptions
from qdbpool.drivers.base import shutdown_socket
from qdbpool.drivers.pgsql import HOST_SELECTION_PARAMS, READ_ONLY_TRANSACTION, is_lost_sqlstate
from qdbpool.dsn import HostPort, Redactor
from qdbpool.errors import ConfigurationError
from qdbpool.factories import postgres as threaded

try:
    import asyncpg
    from asyncpg import connect_utils
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the AsyncPG factory needs asyncpg (and psycopg for its role checks): "
        "pip install 'qdbpool[asyncpg]'"
    ) from exc

_CLOSE_TIMEOUT = 5.0  # a polite close() that takes longer ends in terminate()

# asyncpg.connect keywords that the monitor's (psycopg) probes need too, by libpq's name:
# without them, a password given as a keyword reached asyncpg alone, and every host looked
# down to the monitor ("no password supplied"). `ssl` counts only as a mode's name
# ('require', ...); an SSLContext has no libpq equivalent (then the DSN's sslmode serves).
_SHARED_WITH_THE_MONITOR = {
    "user": "user",
    "password": "password",
    "database": "dbname",
    "passfile": "passfile",
    "ssl": "sslmode",
}

# SQLSTATE classes and codes that say the server refused what we asked for rather than its
# state: invalid authorization (28), an unknown database (3D000).
_REFUSED_US_CLASSES = ("28",)
_REFUSED_US_CODES = frozenset({"3D000"})


class AsyncpgErrors:
    """How the routing tells asyncpg's errors apart (qdbpool.drivers.base.ErrorJudge)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._redact = Redactor(secrets)

    def is_connection_lost(self, conn: Any, exc: BaseException) -> bool:
        if conn.is_closed():
            return True
        if isinstance(exc, (OSError, EOFError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            return True
        state = getattr(exc, "sqlstate", None)
        return isinstance(state, str) and is_lost_sqlstate(state)

    def is_read_only_violation(self, exc: BaseException) -> bool:
        if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
            return True  # at connect, for writes: the session cannot write
        return getattr(exc, "sqlstate", None) == READ_ONLY_TRANSACTION

    def is_configuration_error(self, exc: BaseException) -> bool:
        if isinstance(exc, (TypeError, asyncpg.exceptions.ClientConfigurationError)):
            return True  # an unknown keyword or a bad value
        state = getattr(exc, "sqlstate", None)
        return isinstance(state, str) and (
            state.startswith(_REFUSED_US_CLASSES) or state in _REFUSED_US_CODES
        )

    def describe_error(self, exc: BaseException) -> str:
        text = str(exc).strip()
        line = self._redact(text.splitlines()[0]) if text else ""
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _sever_asyncpg(conn: asyncpg.Connection) -> None:
    """Shut down the socket of `conn` (from the monitor's thread, its host found stalled),
    so that a task awaiting a result gets an error now rather than never. asyncpg offers no
    public handle on its socket: its transport's is read (a private attribute) at this
    moment, and a closed connection, whose socket number may be another's by now, is left
    alone."""
    if conn.is_closed():
        return
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    fd = sock.fileno() if sock is not None else -1
    if fd >= 0:
        shutdown_socket(fd)


class AsyncPG(RoutedAioFactory):
    """asyncpg connections to the primary (or, with `read_only=True`, a replica).

    Args:
        dsn: As for `qdbpool.factories.Postgres`: a URL or a libpq key/value string, one
            host or several; its query parameters (`sslmode`, ...) go to asyncpg as part
            of each host's DSN, but for libpq's own host selection, which the routing does.
        **options: The routing options (`refresh_delay`, `refresh_timeout`,
            `acquire_timeout`, `fallback_master`, `master_as_replica_weight`, `balancer`,
            `max_replica_lag`); every other keyword goes to each `asyncpg.connect`
            (`command_timeout`, `statement_cache_size`, `server_settings`, ...). Of these,
            `user`, `password`, `database`, `passfile` and `ssl` (a mode's name, e.g.
            `"require"`) reach the monitor's probes too, which psycopg makes.

    Raises:
        ConfigurationError: A malformed DSN or a routing option out of range; also
            `target_session_attrs`, which the routing sets itself.
    """

    def __init__(self, dsn: str, **options: Any) -> None:
        if "target_session_attrs" in options:
            raise ConfigurationError(
                "AsyncPG: target_session_attrs is the routing's own (read_only=... chooses)"
            )
        routing_options = RoutingOptions.take_from(options)
        self._connect_kwargs = options
        # The threaded factory validates the DSN and the routing options and keeps the
        # cluster's state; it never opens an application connection here.
        for_the_monitor = {
            libpq_name: options[name]
            for name, libpq_name in _SHARED_WITH_THE_MONITOR.items()
            if isinstance(options.get(name), str)
        }
        routing = threaded.Postgres(dsn, **for_the_monitor, **vars(routing_options))
        super().__init__(routing, AsyncpgErrors(routing.host_driver.secrets), _sever_asyncpg)
        parsed = routing.dsn
        params = {k: v for k, v in parsed.params.items() if k not in HOST_SELECTION_PARAMS}
        self._dsn = replace(parsed, params=params)

    def _host_dsn(self, address: HostPort) -> str:
        return replace(self._dsn, hosts=(address,)).to_url(redact=False)

    async def _open(self, address: HostPort, *, read_only: bool) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._host_dsn(address),
            target_session_attrs="any" if read_only else "read-write",
            **self._connect_kwargs,
        )

    # asyncpg's close() waits for the answer to a statement being cancelled.
    _close_awaits_answer = True

    def _cancel_sender(self, conn: asyncpg.Connection) -> CancelSender:
        # asyncpg has no public way to send a cancel request: its private helper is
        # called with the connection's address, parameters and key, taken now so that
        # they still serve once it is closed. (The connection's own method, also
        # private, needs it open and ends it when a request cannot be sent.)
        protocol = conn._protocol
        addr, params = conn._addr, conn._params
        pid, secret = protocol.backend_pid, protocol.backend_secret

        async def send_cancel() -> None:
            await connect_utils._cancel(
                loop=asyncio.get_running_loop(),
                addr=addr,
                params=params,
                backend_pid=pid,
                backend_secret=secret,
            )

        return send_cancel

    async def close_connection(self, conn: asyncpg.Connection) -> None:
        self._routing.forget(conn)
        try:
            await asyncio.wait_for(conn.close(), _CLOSE_TIMEOUT)
        except BaseException:
            conn.terminate()  # no goodbye: the socket is closed at once
            raise

    async def ping(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT 1")  # asyncpg is in autocommit: no transaction opened

    async def reset(self, conn: asyncpg.Connection) -> None:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")

    def state_after_use(self, conn: asyncpg.Connection) -> int:
        if conn.is_closed():
            return LOST
        return NEEDS_RESET if conn.is_in_transaction() else CLEAN

    def __repr__(self) -> str:
        return f"qdbpool.aio.factories.AsyncPG({self._dsn.to_url(redact=True)!r})"
