"""What the PostgreSQL drivers (psycopg 3 and psycopg2) share: the role query, and how a
server's SQLSTATE or libpq's message tells a lost session or a refusal. Imports neither
client library, so that each driver needs only its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qdbpool.dsn import HostPort, ParsedDSN
from qdbpool.errors import ConfigurationError

# One round trip answers everything a check needs. A replica's lag is 0 while it streams
# from its upstream (a WAL receiver runs) and has replayed all it received; else the age of
# the last transaction it replayed (NULL, i.e. unknown, when it has replayed none since it
# started). Without the receiver, "replayed all it received" holds for good while the
# primary moves on: a standby cut off from it would count as fresh however far behind.
# Read-only is the server's setting (its reset value: the configuration's, the role's or
# the database's), not the session's: behind PgBouncer in transaction mode the probe runs
# on a server session that another client may have SET read-only, which would make a
# healthy primary look like a replica for as long as that session lives.
ROLE_QUERY = """
SELECT pg_is_in_recovery(),
       (SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_read_only') = 'on',
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                 AND (SELECT pid FROM pg_stat_wal_receiver) IS NOT NULL THEN 0
            ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())
       END
"""

# SQLSTATE classes after which the session is gone: connection exceptions (08) and
# operator intervention (57P: admin/crash shutdown, cannot connect now, ...).
LOST_STATES = ("08", "57P")
# Session-ending timeouts (idle in transaction, idle session) that drivers raise as
# InternalError.
LOST_CODES = frozenset({"25P03", "25P04"})
# read_only_sql_transaction: a write refused by a read-only server.
READ_ONLY_TRANSACTION = "25006"

DEFAULT_CONNECT_TIMEOUT = 2  # libpq's minimum

# libpq options that choose among the hosts of a multi-host DSN. qdbpool chooses hosts by
# role itself and connects to one at a time, so a value written for libpq's own failover
# is dropped: target_session_attrs=read-write would make every replica look down.
HOST_SELECTION_PARAMS = frozenset({"target_session_attrs", "load_balance_hosts"})

# What libpq says when target_session_attrs=read-write finds a session that cannot write.
_NOT_WRITABLE = ("session is read-only", "server is in hot standby mode")

# What a server says when it refuses us for what we asked rather than for its state.
_REFUSED_US = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # database or role
    "password is required",
)


def libpq_kwargs(
    dsn: ParsedDSN, connect_kwargs: dict[str, Any], address: HostPort
) -> dict[str, Any]:
    """The keywords to connect to `address` with: the DSN's, then the factory's own
    `connect_kwargs`, less libpq's host selection, with a default connect_timeout."""
    kwargs: dict[str, Any] = dict(dsn.host_kwargs(address))
    if "database" in kwargs:
        kwargs["dbname"] = kwargs.pop("database")
    kwargs.update(connect_kwargs)
    for name in HOST_SELECTION_PARAMS:
        kwargs.pop(name, None)
    kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return kwargs


def for_writes(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for a connection that will be handed out for writes: libpq refuses a session
    that cannot write (a standby, or a server made read-only), so that a host which changed
    role since its last check, or a proxy port now leading to a standby, fails the connect
    (and the caller waits for a primary) rather than the caller's first write. From
    PostgreSQL 14 on the server says so as the session starts: no extra round trip."""
    return {**kwargs, "target_session_attrs": "read-write"}


def is_lost_sqlstate(state: str) -> bool:
    """Whether a server error with this SQLSTATE means the session is gone."""
    return state.startswith(LOST_STATES) or state in LOST_CODES


def refused_writes(message: str) -> bool:
    """Whether libpq's message for a failed connection says the session could not write
    (see `for_writes`)."""
    return any(sign in message for sign in _NOT_WRITABLE)


def refused_us(message: str) -> bool:
    """Whether libpq's message for a failed connection says the server refused what we
    asked (a wrong password, an unknown database): libpq gives no SQLSTATE then."""
    return "FATAL:" in message and any(sign in message for sign in _REFUSED_US)


# What each of a driver library's own connect keywords (not libpq options) must be: a test,
# and what to say when it fails.
Kinds = Mapping[str, tuple[Callable[[Any], bool], str]]


def none_or_callable(value: Any) -> bool:
    """The test of the drivers' factory keywords, whose own default is None."""
    return value is None or callable(value)


def check_library_kwargs(
    connect_kwargs: Mapping[str, Any], kinds: Kinds, *, from_dsn: bool
) -> None:
    """Refuse, naming it, a library keyword of the wrong kind (`autocommit="false"` turned
    autocommit on; `row_factory=1` failed at the first query with a bare TypeError), or
    one given in a DSN, whose values are all text."""
    for key, (fits, what) in kinds.items():
        if key not in connect_kwargs:
            continue
        if from_dsn:
            raise ConfigurationError(
                f"Postgres: {key} is not a libpq option but the driver's: give it as a "
                f"keyword, Postgres(dsn, {key}=...), not in the DSN"
            )
        value = connect_kwargs[key]
        if not fits(value):
            raise ConfigurationError(f"Postgres: {key} must be {what}, not {value!r}")
