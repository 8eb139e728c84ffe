"""What the PostgreSQL drivers (psycopg 3 and psycopg2) share: the role query, and how a
server's SQLSTATE or libpq's message tells a lost session or a refusal. Imports neither
client library, so that each driver needs only its own.
"""

from __future__ import annotations

# One round trip answers everything a check needs. A replica's lag is 0 while it has
# replayed all it received, else the age of the last transaction it replayed (NULL, i.e.
# unknown, when it has replayed none since it started).
ROLE_QUERY = """
SELECT pg_is_in_recovery(),
       current_setting('transaction_read_only') = 'on',
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
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

# What a server says when it refuses us for what we asked rather than for its state.
_REFUSED_US = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # database or role
    "password is required",
)


def is_lost_sqlstate(state: str) -> bool:
    """Whether a server error with this SQLSTATE means the session is gone."""
    return state.startswith(LOST_STATES) or state in LOST_CODES


def refused_us(message: str) -> bool:
    """Whether libpq's message for a failed connection says the server refused what we
    asked (a wrong password, an unknown database): libpq gives no SQLSTATE then."""
    return "FATAL:" in message and any(sign in message for sign in _REFUSED_US)
