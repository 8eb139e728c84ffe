"""The PyMySQL driver: how to talk to one MySQL or MariaDB host (connect, check its role
and replica lag, ping, reset, and tell a lost connection or a refusal from other errors).

Role: a host is a replica when `read_only` (or, on MySQL, `super_read_only`) is ON.
Connections are never reconnected in place (`ping(reconnect=False)`): a dead one is
replaced by the pool, so a session's state never changes under its user's feet.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from qdbpool import validation
from qdbpool.drivers.base import HostDriver, Observation, Role, secrets_of
from qdbpool.dsn import HostPort, ParsedDSN
from qdbpool.errors import ConfigurationError
from qdbpool.protocol import CLEAN, LOST, NEEDS_RESET

try:
    import pymysql
    from pymysql.charset import charset_by_name
    from pymysql.constants import CR, ER, SERVER_STATUS
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the MySQL factory needs PyMySQL: pip install 'qdbpool[mysql]'") from exc

# Error numbers after which the session is gone.
_LOST_ERRORS = frozenset(
    {
        CR.CR_CONN_HOST_ERROR,  # 2003 can't connect
        CR.CR_SERVER_GONE_ERROR,  # 2006 MySQL server has gone away
        CR.CR_SERVER_LOST,  # 2013 lost connection during query
        2055,  # lost connection at reading/writing (SSL)
        ER.SERVER_SHUTDOWN,  # 1053 server shutdown in progress
        1927,  # MariaDB ER_CONNECTION_KILLED
        4031,  # MySQL 8: disconnected by the server because of inactivity
    }
)
# A write refused because the server is read-only.
_READ_ONLY_ERRORS = frozenset({ER.OPTION_PREVENTS_STATEMENT, 1792})  # 1290, 1792

_ACCESS_DENIED = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
# Refusals for what we asked (not for the server's state): retrying cannot help.
_REFUSED_US = frozenset(
    {
        ER.ACCESS_DENIED_ERROR,  # 1045 wrong user or password
        ER.DBACCESS_DENIED_ERROR,  # 1044 no access to the database
        ER.BAD_DB_ERROR,  # 1049 unknown database
        1698,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    }
)
#: What pymysql.connect accepts: anything else is refused when the factory is made.
PYMYSQL_CONNECT_KWARGS = frozenset(
    inspect.signature(pymysql.connections.Connection.__init__).parameters
) - {"self"}

# Given to app connections only: they change what rows look like (dicts, bytes, the user's
# converters), and the monitor's probe must read the role query as plain text tuples.
_APP_ONLY_KWARGS = frozenset({"cursorclass", "conv", "use_unicode"})

# MySQL's super_read_only implies read_only: one flag tells both servers' replicas.
WRITABLE_QUERY = "SELECT @@global.read_only"

_ROLE_QUERY = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('read_only', 'super_read_only')"

# DSN query parameters arrive as text; PyMySQL (and aiomysql) want these typed.
_FLOAT_PARAMS = frozenset({"connect_timeout", "read_timeout", "write_timeout"})
_INT_PARAMS = frozenset({"client_flag", "max_allowed_packet"})
_BOOL_PARAMS = frozenset(
    {
        "autocommit",
        "binary_prefix",
        "compress",
        "echo",
        "local_infile",
        "named_pipe",
        "ssl_disabled",
        "ssl_verify_cert",
        "ssl_verify_identity",
        "use_unicode",
    }
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Python objects, which no text stands for: keyword arguments of the factory only.
_NOT_TEXT = frozenset({"conv", "cursorclass", "auth_plugin_map", "ssl", "loop"})
# The pool opens its connections itself: one not connected would be handed out as it is.
_REFUSED = frozenset({"defer_connect"})

_DEFAULT_CONNECT_TIMEOUT = 5.0
_CANCEL_TIMEOUT = 5.0  # bounds the thread that sends a KILL QUERY

logger = logging.getLogger("qdbpool")


def typed_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the values given as text (DSN query parameters) typed as PyMySQL
    wants them; raises ConfigurationError, naming the parameter, for text that is not a
    number or a boolean where one is due, or that cannot stand for what is due."""
    typed: dict[str, Any] = {}
    for key, value in params.items():
        if key in _REFUSED:
            raise ConfigurationError(f"MySQL: {key} is the pool's to decide (it connects itself)")
        # An unknown charset: PyMySQL failed at every connect with an AttributeError on
        # None, which showed as every host down.
        if key == "charset" and isinstance(value, str) and value and not charset_by_name(value):
            raise ConfigurationError(f"MySQL: unknown charset {value!r}")
        if not isinstance(value, str):
            typed[key] = value
        elif key in _FLOAT_PARAMS:
            try:
                number = float(value)
            except ValueError:
                raise ConfigurationError(f"{key} must be a number, not {value!r}") from None
            # socket.settimeout(inf) raises OverflowError at every connect: refuse it here
            typed[key] = validation.seconds(key, number)
        elif key in _INT_PARAMS:
            if not value.isdigit():
                raise ConfigurationError(f"{key} must be a whole number, not {value!r}")
            typed[key] = int(value)
        elif key in _BOOL_PARAMS:
            flag = value.lower()
            if flag not in _TRUE | _FALSE:
                raise ConfigurationError(f"{key} must be true or false (1/0, yes/no, on/off)")
            typed[key] = flag in _TRUE
        elif key in _NOT_TEXT:
            raise ConfigurationError(
                f"MySQL: {key} cannot be given as text in the DSN: pass it as a keyword "
                "argument of the factory"
            )
        else:
            typed[key] = value
    return typed


def is_lost_error(exc: BaseException) -> bool:
    """Whether `exc` (PyMySQL's, or aiomysql's: the same classes) says the session is gone."""
    if isinstance(exc, (pymysql.err.InterfaceError, ConnectionError)):
        return True
    if isinstance(exc, pymysql.err.OperationalError) and exc.args:
        return exc.args[0] in _LOST_ERRORS
    return False


def refuse_if_read_only(conn: Any) -> None:
    """For a new connection about to be handed out for writes: raise if its server is
    read-only now (see `check_writable`)."""
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        cur.execute(WRITABLE_QUERY)
        (flag,) = cur.fetchone()
    check_writable(flag)


def check_writable(read_only_flag: Any) -> None:
    """Raise a read-only error (1290, as for a refused write) if `read_only_flag`, the
    answer to WRITABLE_QUERY on a new connection for writes, says the server is read-only.
    A primary demoted since its last check would otherwise take new write connections until
    the next check (up to `refresh_delay`), each failing at its first write; PostgreSQL's
    libpq refuses such a session at connect (target_session_attrs), MySQL has no such
    option. One round trip per new connection, none per checkout."""
    if int(read_only_flag):
        raise pymysql.err.OperationalError(
            ER.OPTION_PREVENTS_STATEMENT, "the server is read-only: not a primary (any more)"
        )


def check_options(options: dict[str, Any], where: str) -> None:
    """Fail once, at construction, for what pymysql.connect() would refuse at every connect:
    an option it does not take, or a DSN parameter that is not a number where one is due."""
    unknown = sorted(set(options) - PYMYSQL_CONNECT_KWARGS)
    if unknown:
        raise ConfigurationError(f"MySQL: pymysql.connect() takes no {where} {', '.join(unknown)}")
    typed_params(options)


class PyMySQLDriver(HostDriver):
    """PyMySQL connections to the hosts of `dsn`; `connect_kwargs` go to every
    `pymysql.connect` (checked beforehand with `check_options`). With `check_lag`, a
    replica's lag is read from its replication status."""

    def __init__(self, dsn: ParsedDSN, connect_kwargs: dict[str, Any], check_lag: bool) -> None:
        self._dsn = dsn
        self._connect_kwargs = connect_kwargs
        self._check_lag = check_lag
        self.secrets = secrets_of(dsn, connect_kwargs)

    def connect_kwargs(self, address: HostPort) -> dict[str, Any]:
        """The keywords of `pymysql.connect` (or `aiomysql.connect`) for a connection to
        `address`."""
        kwargs = typed_params(dict(self._dsn.host_kwargs(address)))
        kwargs.update(self._connect_kwargs)
        kwargs.setdefault("connect_timeout", _DEFAULT_CONNECT_TIMEOUT)
        password = kwargs.get("password")
        if isinstance(password, str) and not password.isascii():
            try:
                password.encode("latin-1")
            except UnicodeEncodeError:
                # PyMySQL and aiomysql send a str password as its Latin-1 bytes: one with a
                # character beyond Latin-1 ('€') failed inside them. It goes as UTF-8, as
                # the mysql client sends it (the str whose Latin-1 bytes those are). One
                # within Latin-1 goes as they send it, as it always did.
                kwargs["password"] = password.encode("utf-8").decode("latin-1")
        return kwargs

    def open(self, address: HostPort, *, read_only: bool) -> Any:
        kwargs = self.connect_kwargs(address)
        # PyMySQL's connect_timeout bounds the TCP connect alone: the server's greeting and
        # the login are read with read_timeout, by default with no limit, so a host that
        # accepts and then says nothing (stalled, or behind a dead proxy) would hold the
        # caller for good. Opening runs under connect_timeout; the application's own read
        # and write timeouts apply from the first statement on (PyMySQL reads them anew
        # at each read and write).
        timeout = kwargs["connect_timeout"]
        conn = pymysql.connect(**{**kwargs, "read_timeout": timeout, "write_timeout": timeout})
        try:
            if not read_only:
                refuse_if_read_only(conn)
        except BaseException:
            conn.close()
            raise
        conn._read_timeout = kwargs.get("read_timeout")
        conn._write_timeout = kwargs.get("write_timeout")
        return conn

    def open_probe(self, address: HostPort, timeout: float) -> Any:
        kwargs = {
            k: v for k, v in self.connect_kwargs(address).items() if k not in _APP_ONLY_KWARGS
        }
        kwargs.update(
            autocommit=True,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            program_name="qdbpool-monitor",
        )
        return pymysql.connect(**kwargs)

    def observe(self, probe: Any) -> Observation:
        with probe.cursor() as cur:
            cur.execute(_ROLE_QUERY)
            flags = {str(name).lower(): str(value).upper() for name, value in cur.fetchall()}
        if "ON" not in flags.values():
            return Observation(Role.PRIMARY)
        return Observation(Role.REPLICA, self._lag(probe))

    def _lag(self, probe: Any) -> float | None:
        """Seconds behind the source, from the replication status (None: not replicating,
        or not allowed to see it: then the replica counts as stale, not as down)."""
        if not self._check_lag:
            return None
        with probe.cursor(pymysql.cursors.DictCursor) as cur:
            try:
                try:
                    cur.execute("SHOW REPLICA STATUS")
                except pymysql.err.ProgrammingError:  # older servers know only the old words
                    cur.execute("SHOW SLAVE STATUS")
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] == _ACCESS_DENIED:
                    logger.warning(
                        "max_replica_lag is set but the user may not read the replication "
                        "status (grant REPLICATION CLIENT, or SLAVE MONITOR on MariaDB): "
                        "replicas will count as stale"
                    )
                    self._check_lag = False
                    return None
                raise
            row = cur.fetchone()
        if not row:
            return None
        lag = row.get("Seconds_Behind_Master", row.get("Seconds_Behind_Source"))
        return None if lag is None else float(lag)

    def is_open(self, conn: Any) -> bool:
        return bool(conn.open)

    def is_connection_lost(self, conn: Any, exc: BaseException) -> bool:
        return not conn.open or is_lost_error(exc)

    def is_configuration_error(self, exc: BaseException) -> bool:
        if isinstance(exc, TypeError):
            return True  # an argument pymysql.connect does not take
        return (
            isinstance(exc, pymysql.err.MySQLError)
            and bool(exc.args)
            and (exc.args[0] in _REFUSED_US)
        )

    def is_read_only_violation(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, pymysql.err.MySQLError)
            and bool(exc.args)
            and (exc.args[0] in _READ_ONLY_ERRORS)
        )

    def socket_of(self, conn: Any) -> int | None:
        sock = getattr(conn, "_sock", None)
        try:
            return None if sock is None else int(sock.fileno())
        except OSError:
            return None

    def cancel_sender(self, conn: Any, address: HostPort) -> Callable[[], None] | None:
        # MySQL has no cancel request: KILL QUERY on a connection of our own, as the same
        # user (who may kill its own sessions' statements).
        try:
            thread_id = int(conn.server_thread_id[0])
        except Exception:  # not connected: nothing runs there
            return None
        kwargs = self.connect_kwargs(address)
        kwargs.update(autocommit=True, read_timeout=_CANCEL_TIMEOUT, write_timeout=_CANCEL_TIMEOUT)
        kwargs["connect_timeout"] = min(
            kwargs.get("connect_timeout", _CANCEL_TIMEOUT), _CANCEL_TIMEOUT
        )

        def kill_query() -> None:
            killer = pymysql.connect(**kwargs)
            try:
                with killer.cursor() as cur:
                    cur.execute(f"KILL QUERY {thread_id:d}")
            finally:
                killer.close()

        return kill_query

    def ping(self, conn: Any) -> None:
        conn.ping(reconnect=False)

    def state_after_use(self, conn: Any) -> int:
        if not conn.open:
            return LOST
        # The server reports, with every reply, whether a transaction is open: no I/O here.
        if conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
            return NEEDS_RESET
        return CLEAN

    def reset(self, conn: Any) -> None:
        conn.rollback()

    def describe_error(self, exc: BaseException) -> str:
        if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
            return self._one_line(exc, f"({exc.args[0]}) {exc.args[1]}")
        return self._one_line(exc, str(exc))
