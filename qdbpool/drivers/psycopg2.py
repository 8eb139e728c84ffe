"""The psycopg2 driver: how to talk to one PostgreSQL host through psycopg2 (connect, check
its role, ping, reset, cancel, and tell a lost connection or a refusal from other errors).

The same promises as the psycopg 3 driver (qdbpool.drivers.psycopg), kept with what
psycopg2 offers:

- `conn.closed` is an int: 0 while open, 1 once closed, 2 once libpq found it broken.
- psycopg2 opens a transaction before the first statement unless `autocommit` is on: the
  transaction status (`conn.get_transaction_status()`, libpq's, no I/O) tells after each
  use whether a rollback is due; role probes run in autocommit, so they never leave one open.
- psycopg2's `conn.cancel()` (libpq's PQcancel) holds the GIL until the server answers,
  which a stalled host never does: the whole process freezes, for good. The statement is
  stopped instead with `pg_cancel_backend(pid)` over a short-lived session of the same
  user, which waits with the GIL free and within `connect_timeout`. Through PgBouncer
  (`pgbouncer=True`) the backend pid a client sees is PgBouncer's, not the server's, so no
  cancel is sent there: the socket is shut down, and PgBouncer drops the server session.
- A lost session raises `OperationalError` (or `InterfaceError` once closed), with a
  SQLSTATE in `pgcode` when the server said why; a write refused by a read-only server has
  `pgcode` 25006.
"""

from __future__ import annotations

import functools
import operator
import weakref
from collections.abc import Callable
from typing import Any

from qdbpool.drivers.base import HostDriver, Observation, Role, secrets_of
from qdbpool.drivers.pgsql import (
    READ_ONLY_TRANSACTION,
    ROLE_QUERY,
    Kinds,
    check_library_kwargs,
    for_writes,
    is_lost_sqlstate,
    libpq_kwargs,
    none_or_callable,
    refused_us,
    refused_writes,
)
from qdbpool.dsn import HostPort, ParsedDSN
from qdbpool.errors import ConfigurationError
from qdbpool.protocol import CLEAN, LOST, NEEDS_RESET

try:
    import psycopg2
    import psycopg2.extensions
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "Postgres(driver='psycopg2') needs psycopg2: pip install 'qdbpool[psycopg2]'"
    ) from exc

# psycopg2.connect's own keywords (asynchronous connections are not supported: `async`
# fails as an unknown option); every other keyword is a libpq connection option.
_PSYCOPG2_CONNECT_KWARGS = frozenset({"connection_factory", "cursor_factory"})
# Given to app connections only: a probe must read plain tuples, whatever the user's
# cursor or connection classes do.
_APP_ONLY_KWARGS = frozenset({"connection_factory", "cursor_factory"})

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
_INERROR = psycopg2.extensions.TRANSACTION_STATUS_INERROR


class Psycopg2Driver(HostDriver):
    """psycopg2 connections to the hosts of `dsn`; `connect_kwargs` go to every
    `psycopg2.connect` (checked beforehand with `check_connect_kwargs`)."""

    def __init__(
        self, dsn: ParsedDSN, connect_kwargs: dict[str, Any], *, pgbouncer: bool = False
    ) -> None:
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self._pgbouncer = pgbouncer
        self.secrets = secrets_of(dsn, connect_kwargs)
        # Each app connection's backend pid, read once by its own thread as it opens: the
        # thread that interrupts it later must not touch the connection.
        self._pids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def _kwargs(self, address: HostPort) -> dict[str, Any]:
        return libpq_kwargs(self._dsn, self._connect_kwargs, address)

    def open(self, address: HostPort, *, read_only: bool) -> Any:
        kwargs = self._kwargs(address)
        conn = psycopg2.connect(**(kwargs if read_only else for_writes(kwargs)))
        self._pids[conn] = conn.get_backend_pid()  # libpq's, no I/O
        return conn

    def open_probe(self, address: HostPort, timeout: float) -> Any:
        return self._open_autocommit(address, "qdbpool-monitor")

    def _open_autocommit(self, address: HostPort, application_name: str) -> Any:
        kwargs = {k: v for k, v in self._kwargs(address).items() if k not in _APP_ONLY_KWARGS}
        kwargs["application_name"] = application_name
        probe = psycopg2.connect(**kwargs)
        try:
            probe.autocommit = True  # client-side: the role query opens no transaction
        except BaseException:
            probe.close()
            raise
        return probe

    def observe(self, probe: Any) -> Observation:
        with probe.cursor() as cur:
            cur.execute(ROLE_QUERY)
            in_recovery, read_only, lag = cur.fetchone()
        if in_recovery or read_only:
            # No lag (None) while it has replayed nothing since it started: unknown, so
            # stale for max_replica_lag rather than fresh.
            return Observation(Role.REPLICA, float(lag) if lag is not None else None)
        return Observation(Role.PRIMARY)

    def is_open(self, conn: Any) -> bool:
        return not conn.closed

    def is_connection_lost(self, conn: Any, exc: BaseException) -> bool:
        if conn.closed:
            return True
        if not isinstance(exc, psycopg2.Error):
            return isinstance(exc, (ConnectionError, EOFError))
        state = exc.pgcode
        if state is None:
            # psycopg2's or libpq's own: "server closed the connection unexpectedly",
            # "connection already closed", ...
            return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        return is_lost_sqlstate(state)

    def is_read_only_violation(self, exc: BaseException) -> bool:
        if isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None:
            return refused_writes(str(exc))  # at connect, for writes
        return isinstance(exc, psycopg2.Error) and exc.pgcode == READ_ONLY_TRANSACTION

    def is_configuration_error(self, exc: BaseException) -> bool:
        if isinstance(exc, (TypeError, psycopg2.ProgrammingError)):
            return True  # an unknown option ("invalid dsn")
        return refused_us(str(exc))

    def socket_of(self, conn: Any) -> int | None:
        try:
            fd: int = conn.fileno()
        except Exception:  # closed
            return None
        return fd

    def cancel_sender(self, conn: Any, address: HostPort) -> Callable[[], None] | None:
        if self._pgbouncer:
            return None  # the pid is PgBouncer's: it could name another server session
        pid = self._pids.get(conn)
        if pid is None:
            return None
        return functools.partial(self._cancel_backend, address, pid)

    def _cancel_backend(self, address: HostPort, pid: int) -> None:
        # The backend still serves the connection being interrupted (its owner closes it
        # only once it is given back), so `pid` names that session and no other.
        session = self._open_autocommit(address, "qdbpool-cancel")
        try:
            with session.cursor() as cur:
                cur.execute("SELECT pg_cancel_backend(%s)", (pid,))
        finally:
            session.close()

    def ping(self, conn: Any) -> None:
        # A round trip that opens no transaction: in autocommit, then the user's mode back
        # (psycopg2's autocommit is a client-side flag when nothing else was set).
        if conn.autocommit:
            _select_one(conn)
            return
        conn.autocommit = True
        try:
            _select_one(conn)
        finally:
            if not conn.closed:  # else the error that closed it is the one to see
                conn.autocommit = False

    # libpq's transaction status is IDLE (0) only on a healthy connection with nothing
    # open: a C-level call that the fast path can trust when it returns 0 (it raises once
    # the connection is closed, which sends the connection to state_after_use).
    after_use_hint = operator.methodcaller("get_transaction_status")

    def state_after_use(self, conn: Any) -> int:
        if conn.closed:
            return LOST
        status = conn.get_transaction_status()
        if status == _IDLE:
            return CLEAN
        if status in (_INTRANS, _INERROR):
            return NEEDS_RESET
        return LOST  # ACTIVE (a result still streaming) or UNKNOWN (broken)

    def reset(self, conn: Any) -> None:
        conn.rollback()

    def describe_error(self, exc: BaseException) -> str:
        return self._one_line(exc, str(exc))


def _select_one(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")


_LIBRARY_KINDS: Kinds = {
    # None is psycopg2's own default for both.
    "connection_factory": (none_or_callable, "a connection class or None"),
    "cursor_factory": (none_or_callable, "a cursor class or None"),
}


def check_connect_kwargs(connect_kwargs: dict[str, Any], *, from_dsn: bool = False) -> None:
    """Unknown libpq options, and a password that is not a str, fail here (naming the option,
    never the password), not at every connect; also for a DSN's query parameters
    (`from_dsn`), where psycopg2's own keywords have no place."""
    check_library_kwargs(connect_kwargs, _LIBRARY_KINDS, from_dsn=from_dsn)
    password = connect_kwargs.get("password")
    if password is not None and not isinstance(password, str):
        raise ConfigurationError(
            f"Postgres: password must be a str or None, not {type(password).__name__}"
        )
    options = {
        key: value
        for key, value in connect_kwargs.items()
        if key not in _PSYCOPG2_CONNECT_KWARGS and key != "password"
    }
    try:
        psycopg2.extensions.make_dsn(**options)
    except psycopg2.ProgrammingError as exc:
        raise ConfigurationError(f"Postgres: {exc}") from None
