"""The psycopg 3 driver: how to talk to one PostgreSQL host (connect, check its role, ping,
reset, and tell a lost connection or a refusal from other errors).

Role: primary iff not in recovery and not read-only by the server's settings (see
ROLE_QUERY), so a primary made read-only counts as a replica.
"""

from __future__ import annotations

import functools
import operator
import select
import time
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
    import psycopg
    import psycopg.conninfo
    from psycopg import pq
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the Postgres factory needs psycopg 3: pip install 'qdbpool[postgres]'"
    ) from exc

_CANCEL_TIMEOUT = 5.0  # bounds the thread that sends a cancel request

# psycopg.connect's own keywords; every other keyword is a libpq connection option.
_PSYCOPG_CONNECT_KWARGS = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)
# Given to app connections only: they change what rows look like (a dict_row, a loader of
# the user's), and the monitor's probe must read the role query as plain tuples.
_APP_ONLY_KWARGS = frozenset({"row_factory", "cursor_factory", "context"})

_IDLE = int(pq.TransactionStatus.IDLE)
_INTRANS = int(pq.TransactionStatus.INTRANS)
_INERROR = int(pq.TransactionStatus.INERROR)


class PsycopgDriver(HostDriver):
    """psycopg 3 connections to the hosts of `dsn`; `connect_kwargs` go to every
    `psycopg.connect` (checked beforehand with `check_connect_kwargs`)."""

    def __init__(self, dsn: ParsedDSN, connect_kwargs: dict[str, Any]) -> None:
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self.secrets = secrets_of(dsn, connect_kwargs)

    def _kwargs(self, address: HostPort) -> dict[str, Any]:
        return libpq_kwargs(self._dsn, self._connect_kwargs, address)

    def open(self, address: HostPort, *, read_only: bool) -> Any:
        return psycopg.connect(**self.connect_kwargs(address, read_only=read_only))

    def connect_kwargs(self, address: HostPort, *, read_only: bool) -> dict[str, Any]:
        """The keywords of `psycopg.connect` (or `psycopg.AsyncConnection.connect`) for an
        application connection to `address`."""
        kwargs = self._kwargs(address)
        return kwargs if read_only else for_writes(kwargs)

    def open_probe(self, address: HostPort, timeout: float) -> Any:
        kwargs = {k: v for k, v in self._kwargs(address).items() if k not in _APP_ONLY_KWARGS}
        kwargs["autocommit"] = True
        kwargs["application_name"] = "qdbpool-monitor"
        return psycopg.connect(**kwargs)

    def observe(self, probe: Any) -> Observation:
        row = probe.execute(ROLE_QUERY).fetchone()
        in_recovery, read_only, lag = row
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
        if not isinstance(exc, psycopg.Error):
            return isinstance(exc, (ConnectionError, EOFError))
        state = exc.sqlstate
        if state is None:
            # psycopg's own "consuming input failed", "the connection is lost", ...
            return isinstance(exc, psycopg.OperationalError)
        return is_lost_sqlstate(state)

    def is_read_only_violation(self, exc: BaseException) -> bool:
        if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
            return refused_writes(str(exc))  # at connect, for writes
        return getattr(exc, "sqlstate", None) == READ_ONLY_TRANSACTION

    def is_configuration_error(self, exc: BaseException) -> bool:
        if isinstance(exc, (TypeError, psycopg.ProgrammingError)):
            return True  # an unknown option
        # libpq reports connection-time refusals as text (psycopg has no SQLSTATE then).
        return refused_us(str(exc))

    def socket_of(self, conn: Any) -> int | None:
        try:
            fd: int = conn.pgconn.socket
        except Exception:
            return None
        return fd

    def cancel_sender(self, conn: Any, address: HostPort) -> Callable[[], None] | None:
        if not psycopg.capabilities.has_cancel_safe():
            # libpq < 17 has only PQcancel, which blocks with the GIL held: a stalled host
            # would freeze the whole process. Better the statement runs to its end.
            return None
        try:
            # No I/O: a copy of what the request needs, valid once `conn` is closed.
            cancel_conn = conn.pgconn.cancel_conn()
        except Exception:  # closed already: nothing runs there any more
            return None
        return functools.partial(_send_cancel_request, cancel_conn, _CANCEL_TIMEOUT)

    def ping(self, conn: Any) -> None:
        # An empty query is a round trip that opens no transaction: run it in autocommit,
        # then put the user's mode back.
        if conn.autocommit:
            conn.execute("")
            return
        conn.autocommit = True
        try:
            conn.execute("")
        finally:
            conn.autocommit = False

    # libpq's transaction status is IDLE (0) only on a healthy connection with nothing
    # open: a C-level getter that the fast path can trust when it reads 0.
    after_use_hint = operator.attrgetter("pgconn.transaction_status")

    def state_after_use(self, conn: Any) -> int:
        # libpq's own status, one read (conn.info.transaction_status costs 20x more): it is
        # UNKNOWN once the connection is closed or broken, so it answers both questions.
        status = conn.pgconn.transaction_status
        if status == _IDLE:
            return CLEAN
        if status in (_INTRANS, _INERROR):
            return NEEDS_RESET
        return LOST  # ACTIVE (a result still streaming) or UNKNOWN (closed, broken)

    def reset(self, conn: Any) -> None:
        conn.rollback()

    def describe_error(self, exc: BaseException) -> str:
        return self._one_line(exc, str(exc))


def _send_cancel_request(cancel_conn: Any, timeout: float) -> None:
    """Drive libpq's non-blocking cancel connection to its end, within `timeout` seconds;
    waits in select(), so other threads run meanwhile. It is reset, not finished, after
    each request, so that the same request can be sent again (qdbpool.aio resends one the
    server may have ignored); libpq's copy is freed with the object."""
    deadline = time.monotonic() + timeout
    try:
        cancel_conn.start()
        while True:
            status = cancel_conn.poll()
            if status == pq.PollingStatus.OK:
                return
            if status == pq.PollingStatus.FAILED:
                raise psycopg.OperationalError(
                    f"cancel request failed: {cancel_conn.get_error_message()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to the cancel request within {timeout:g}s")
            fds = [cancel_conn.socket]
            if status == pq.PollingStatus.READING:
                select.select(fds, [], [], remaining)
            else:
                select.select([], fds, [], remaining)
    finally:
        cancel_conn.reset()


_LIBRARY_KINDS: Kinds = {
    "autocommit": (lambda v: isinstance(v, bool), "True or False"),
    "prepare_threshold": (
        lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "a whole number or None",
    ),
    # None is psycopg's own default for the three below.
    "row_factory": (
        none_or_callable,
        "a row factory (a callable, e.g. psycopg.rows.dict_row) or None",
    ),
    "cursor_factory": (none_or_callable, "a cursor class or None"),
    "context": (lambda v: v is None or hasattr(v, "adapters"), "an adaptation context or None"),
}


def check_connect_kwargs(connect_kwargs: dict[str, Any], *, from_dsn: bool = False) -> None:
    """Unknown libpq options, and a password that is not a str, fail here (naming the option,
    never the password), not at every connect; also for a DSN's query parameters
    (`from_dsn`), where psycopg's own keywords have no place."""
    check_library_kwargs(connect_kwargs, _LIBRARY_KINDS, from_dsn=from_dsn)
    password = connect_kwargs.get("password")
    if password is not None and not isinstance(password, str):
        raise ConfigurationError(
            f"Postgres: password must be a str or None, not {type(password).__name__}"
        )
    options = {
        key: value
        for key, value in connect_kwargs.items()
        if key not in _PSYCOPG_CONNECT_KWARGS and key != "password"
    }
    try:
        psycopg.conninfo.make_conninfo("", **options)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"Postgres: {exc}") from None
