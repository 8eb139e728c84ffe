"""The MySQL factory on one real MariaDB server: how it connects, what it refuses, how it
checks, resets and pings connections."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pymysql
import pytest

import qdbpool
from qdbpool.errors import ConfigurationError, NoHostAvailableError
from qdbpool.factories.mysql import MySQL
from qdbpool.protocol import CLEAN, LOST
from qdbpool.testing._process import wait_until
from qdbpool.testing.mariadb import MariaDBServer
from qdbpool.testing.proxy import FaultProxy

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(60)]

APP_USER = "app"
APP_PASSWORD = "Pw/@:%s3cr3t-7xq"  # as in conftest.py
APP_DB = "appdb"
SECRET = "Zz-hunter2-Secret-Zz"  # a password used only where it must never show


def _everything_said_about(exc: BaseException) -> str:
    """str, repr and the full traceback text of an exception and everything it chains."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# ------------------------------------------------------------------ connecting


def test_dsn_form_connects_as_its_user_to_its_database(
    server: MariaDBServer, make_factory: Callable[..., MySQL], scalar: Callable[..., Any]
) -> None:
    factory = make_factory(server)
    conn = factory.connect()
    try:
        assert scalar(conn, "SELECT CURRENT_USER()") == f"{APP_USER}@%"
        assert scalar(conn, "SELECT DATABASE()") == APP_DB
        assert scalar(conn, "SELECT @@port") == server.port
    finally:
        factory.close_connection(conn)


def test_keyword_form_connects_as_its_user_to_its_database(
    server: MariaDBServer, closing: Callable[[Any], Any], scalar: Callable[..., Any]
) -> None:
    factory = closing(
        MySQL(
            host=server.host,
            port=server.port,
            user=APP_USER,
            password=APP_PASSWORD,
            database=APP_DB,
        )
    )
    conn = factory.connect()
    try:
        assert scalar(conn, "SELECT CURRENT_USER()") == f"{APP_USER}@%"
        assert scalar(conn, "SELECT DATABASE()") == APP_DB
    finally:
        factory.close_connection(conn)


def test_dsn_query_parameters_reach_pymysql_typed(
    server: MariaDBServer, closing: Callable[[Any], Any], app_dsn: Callable[[Any], str]
) -> None:
    factory = closing(MySQL(app_dsn(server) + "?autocommit=true&connect_timeout=3&charset=utf8mb4"))
    conn = factory.connect()
    try:
        assert conn.get_autocommit() is True
        assert conn.connect_timeout == 3.0
        assert conn.charset == "utf8mb4"
    finally:
        factory.close_connection(conn)


def test_dsn_booleans_reach_pymysql_as_booleans(
    server: MariaDBServer, closing: Callable[[Any], Any], app_dsn: Callable[[Any], str]
) -> None:
    # use_unicode=false reached PyMySQL as the text 'false', which is true.
    factory = closing(MySQL(app_dsn(server) + "?use_unicode=false&binary_prefix=0"))
    conn = factory.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 'x'")
            assert cur.fetchone() == (b"x",)
    finally:
        factory.close_connection(conn)


def test_extra_keyword_arguments_reach_pymysql(
    server: MariaDBServer, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(server, autocommit=True, read_timeout=7)
    conn = factory.connect()
    try:
        assert conn.get_autocommit() is True
        assert conn._read_timeout == 7
    finally:
        factory.close_connection(conn)


# ------------------------------------------------------------------ refusing bad input


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:5432/appdb",
        f"mysql://app:{SECRET}@127.0.0.1:notaport/appdb",
        f"mysql://app:{SECRET}@127.0.0.1:99999/appdb",
        f"mysql://app:{SECRET}@127.0.0.1/appdb?x=1&x=2",
        f"mysql://app:{SECRET}@127.0.0.1/app@db",
    ],
    ids=["other-scheme", "port-not-a-number", "port-out-of-range", "repeated-param", "raw-at"],
)
def test_bad_dsn_is_refused_without_the_password(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        MySQL(dsn)
    assert SECRET not in _everything_said_about(err.value)


def test_dsn_and_keywords_together_are_refused_without_the_password() -> None:
    with pytest.raises(ConfigurationError, match="either a DSN or") as err:
        MySQL("mysql://app@127.0.0.1/appdb", password=SECRET)
    assert SECRET not in _everything_said_about(err.value)


def test_neither_dsn_nor_host_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="DSN or a host"):
        MySQL(user="app", password=SECRET)


@pytest.mark.parametrize("port", ["3306", 0, 70_000, True, 3306.0])
def test_bad_keyword_port_is_refused(port: Any) -> None:
    with pytest.raises(ConfigurationError, match="port") as err:
        MySQL(host="127.0.0.1", port=port, user="app", password=SECRET)
    assert SECRET not in _everything_said_about(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"balancer": "fastest"},
        {"master_as_replica_weight": 2.0},
        {"max_replica_lag": -1},
        {"refresh_delay": 0},
        {"acquire_timeout": -1.0},
        {"refresh_timeout": 10**400},
        {"max_replica_lag": -(10**400)},
    ],
    ids=["balancer", "weight", "lag", "refresh_delay", "acquire_timeout", "huge", "-huge"],
)
def test_bad_routing_option_is_refused(kwargs: dict[str, Any]) -> None:
    (name,) = kwargs
    with pytest.raises(ConfigurationError, match=name) as err:
        MySQL(f"mysql://app:{SECRET}@127.0.0.1/appdb", **kwargs)
    assert SECRET not in _everything_said_about(err.value)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("bogus_option=1", "bogus_option"),
        ("connect_timeout=soon", "connect_timeout"),
        ("client_flag=some", "client_flag"),
        ("use_unicode=maybe", "use_unicode"),
        ("cursorclass=DictCursor", "cursorclass"),
        ("defer_connect=false", "defer_connect"),
        ("charset=utf9", "charset 'utf9'"),
    ],
    ids=[
        "unknown",
        "not-a-number",
        "not-an-int",
        "not-a-bool",
        "not-text",
        "the-pools-own",
        "unknown-charset",
    ],
)
def test_a_bad_dsn_parameter_is_refused_at_construction_naming_it(query: str, named: str) -> None:
    # As for keywords: refused once, not at every connect until acquire_timeout.
    with pytest.raises(ConfigurationError, match=named) as err:
        MySQL(f"mysql://app:{SECRET}@127.0.0.1/appdb?{query}")
    assert SECRET not in _everything_said_about(err.value)


def test_an_unknown_charset_keyword_is_refused_at_construction() -> None:
    # PyMySQL failed at every connect with an AttributeError on None: every host down.
    with pytest.raises(ConfigurationError, match="unknown charset 'utf9'"):
        MySQL(host="127.0.0.1", user=APP_USER, password=SECRET, charset="utf9")


def test_unknown_pymysql_keyword_is_refused_at_once_naming_it(
    server: MariaDBServer, closing: Callable[[Any], Any]
) -> None:
    # A typo in a driver option is a programming error: it should be reported at once
    # (at construction, or at the latest by the first connect), naming the option -- not
    # retried until acquire_timeout and then reported as an unreachable host.
    started = time.monotonic()
    error: Exception | None = None
    try:
        factory = closing(
            MySQL(
                host=server.host,
                port=server.port,
                user=APP_USER,
                password=SECRET,
                bogus_option=1,
                acquire_timeout=2.0,
            )
        )
        factory.connect()
    except Exception as exc:
        error = exc
    elapsed = time.monotonic() - started
    assert isinstance(error, (ConfigurationError, TypeError)), (
        f"got {type(error).__name__} after {elapsed:.1f}s: {error}"
    )
    assert "bogus_option" in str(error)
    assert elapsed < 1.0
    assert SECRET not in _everything_said_about(error)


def test_wrong_password_fails_saying_access_denied_without_the_password(
    server: MariaDBServer, closing: Callable[[Any], Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="qdbpool")
    factory = closing(MySQL(server.dsn(APP_USER, SECRET, APP_DB), acquire_timeout=0.5))
    with pytest.raises(NoHostAvailableError, match="Access denied") as err:
        factory.connect()
    assert SECRET not in _everything_said_about(err.value)
    assert SECRET not in caplog.text


def test_repr_of_factory_and_pool_hide_the_password(
    server: MariaDBServer, closing: Callable[[Any], Any]
) -> None:
    factory = closing(MySQL(server.dsn(APP_USER, SECRET, APP_DB)))
    pool = closing(qdbpool.BoundedPool(factory, size=1))
    shown = "\n".join([repr(factory), str(factory), repr(pool), repr(factory.dsn)])
    assert SECRET not in shown
    assert f"127.0.0.1:{server.port}" in repr(factory)


# ------------------------------------------------------------------ liveness without I/O


class _SpySocket:
    """Stands in for a connection's socket and file: records any use, does nothing."""

    def __init__(self, used: list[str]) -> None:
        self._used = used

    def __getattr__(self, name: str) -> Any:
        self._used.append(name)
        raise AssertionError(f"the liveness check used the socket ({name})")


def test_liveness_check_does_no_io(
    server: MariaDBServer, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(server)
    conn = factory.connect()
    sock, rfile = conn._sock, conn._rfile
    used: list[str] = []
    conn._sock = conn._rfile = _SpySocket(used)
    try:
        usable = factory.is_usable(conn)
        state = factory.state_after_use(conn)
        dirty = factory.needs_reset(conn)
    finally:
        conn._sock, conn._rfile = sock, rfile
        factory.close_connection(conn)
    assert used == []
    assert (usable, state, dirty) == (True, CLEAN, False)


def test_liveness_check_sees_a_closed_connection(
    server: MariaDBServer, make_factory: Callable[..., MySQL]
) -> None:
    factory = make_factory(server)
    conn = factory.connect()
    conn.close()
    assert factory.is_usable(conn) is False
    assert factory.state_after_use(conn) == LOST


# ------------------------------------------------------------------ reset on release


@pytest.fixture
def table(server: MariaDBServer) -> str:
    server.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.items (id INT PRIMARY KEY) ENGINE=InnoDB")
    server.sql(f"DELETE FROM {APP_DB}.items")
    return f"{APP_DB}.items"


@pytest.fixture
def one_session_pool(
    server: MariaDBServer, make_factory: Callable[..., MySQL], make_pool: Callable[..., Any]
) -> Callable[..., qdbpool.BoundedPool]:
    """one_session_pool(**MySQL kwargs): a BoundedPool of one connection over the module's
    server, so that every checkout is the same session."""

    def make(**factory_kwargs: Any) -> qdbpool.BoundedPool:
        pool: qdbpool.BoundedPool = make_pool(
            make_factory(server, **factory_kwargs), pool_cls=qdbpool.BoundedPool, size=1
        )
        return pool

    return make


def _rollbacks(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Com_rollback'")
        (_, value) = cur.fetchone()
    return int(value)


def test_release_rolls_back_an_open_transaction(
    server: MariaDBServer,
    one_session_pool: Callable[..., qdbpool.BoundedPool],
    connection_id: Callable[[Any], int],
    table: str,
) -> None:
    pool = one_session_pool()
    with pool.connect() as conn:
        assert conn.get_autocommit() is False
        first_session = connection_id(conn)
        rollbacks_before = _rollbacks(conn)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")  # left uncommitted

    with pool.connect() as conn:
        assert connection_id(conn) == first_session  # the same session, reset
        assert _rollbacks(conn) == rollbacks_before + 1
        with conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {table}")
            assert cur.fetchall() == ()  # not even visible to its own session
            cur.execute(f"INSERT INTO {table} VALUES (2)")
        conn.commit()  # had row 1 survived in an open transaction, this would commit it too

    assert server.sql(f"SELECT id FROM {table}") == [(2,)]


def test_release_leaves_autocommit_work_alone(
    server: MariaDBServer,
    one_session_pool: Callable[..., qdbpool.BoundedPool],
    table: str,
) -> None:
    pool = one_session_pool(autocommit=True)
    with pool.connect() as conn:
        rollbacks_before = _rollbacks(conn)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (3)")
    with pool.connect() as conn:
        assert _rollbacks(conn) == rollbacks_before  # nothing was sent at release
    assert server.sql(f"SELECT id FROM {table}") == [(3,)]


def test_release_after_commit_sends_no_rollback(
    server: MariaDBServer,
    one_session_pool: Callable[..., qdbpool.BoundedPool],
    table: str,
) -> None:
    pool = one_session_pool()
    with pool.connect() as conn:
        rollbacks_before = _rollbacks(conn)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (4)")
        conn.commit()
    with pool.connect() as conn:
        assert _rollbacks(conn) == rollbacks_before
    assert server.sql(f"SELECT id FROM {table}") == [(4,)]


def test_release_rolls_back_an_explicit_transaction_on_an_autocommit_connection(
    server: MariaDBServer,
    one_session_pool: Callable[..., qdbpool.BoundedPool],
    table: str,
) -> None:
    pool = one_session_pool(autocommit=True)
    with pool.connect() as conn:
        conn.begin()
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (5)")
    with pool.connect() as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (6)")
    assert server.sql(f"SELECT id FROM {table}") == [(6,)]


# ------------------------------------------------------------------ ping


def test_ping_of_a_killed_connection_raises_and_does_not_reconnect(
    server: MariaDBServer,
    make_factory: Callable[..., MySQL],
    connection_id: Callable[[Any], int],
    sessions_of: Callable[[MariaDBServer], set[int]],
    lost_errors: tuple[type[BaseException], ...],
) -> None:
    factory = make_factory(server)
    conn = factory.connect()
    try:
        killed = connection_id(conn)
        before = sessions_of(server)
        server.kill_connection(killed)
        with pytest.raises(lost_errors):
            factory.ping(conn)
        assert conn.open is False  # left broken for the pool to replace ...
        wait_until(lambda: killed not in sessions_of(server), timeout=10, what="kill done")
        assert sessions_of(server) <= before  # ... and no new session opened behind our back
        with pytest.raises(pymysql.err.Error):
            factory.ping(conn)  # still no reconnection on a second try
    finally:
        factory.close_connection(conn)


def test_ping_of_a_live_connection_keeps_its_session(
    server: MariaDBServer, make_factory: Callable[..., MySQL], scalar: Callable[..., Any]
) -> None:
    factory = make_factory(server)
    conn = factory.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET @marker = 42")
        factory.ping(conn)
        assert scalar(conn, "SELECT @marker") == 42
    finally:
        factory.close_connection(conn)


# ------------------------------------------------------------------ opening a connection


def test_opening_to_a_server_that_accepts_and_says_nothing_ends_within_connect_timeout(
    server: MariaDBServer, closing: Callable[[Any], Any], app_dsn: Callable[[Any], str]
) -> None:
    # PyMySQL bounds only the TCP connect by connect_timeout and reads the server's greeting
    # with read_timeout, by default forever: through a stalled proxy the connect succeeds,
    # and the caller waited for the greeting until the proxy was healed.
    proxy = closing(FaultProxy(server.host, server.port))
    dsn = app_dsn(server).replace(f":{server.port}/", f":{proxy.port}/")
    factory = closing(MySQL(dsn, connect_timeout=1, acquire_timeout=1, refresh_delay=60))
    factory.ready(masters_count=1, timeout=10)
    proxy.stall()
    outcome: list[BaseException | None] = []

    def open_one() -> None:
        try:
            factory.close_connection(factory.connect())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    opener = threading.Thread(target=open_one, daemon=True)
    opener.start()
    opener.join(timeout=20)
    hung = opener.is_alive()
    proxy.pass_through()  # lets a hung opener end
    opener.join(timeout=10)
    assert not hung, "connect() still waited for the server's greeting after 20 s"
    assert len(outcome) == 1 and isinstance(outcome[0], NoHostAvailableError)


def test_a_connection_keeps_no_connect_timeout_on_its_statements(
    server: MariaDBServer, make_factory: Callable[..., MySQL], scalar: Callable[..., Any]
) -> None:
    # Opening runs under connect_timeout; the statements after it under the application's
    # read_timeout (none here), not under connect_timeout.
    factory = make_factory(server, connect_timeout=1)
    conn = factory.connect()
    try:
        assert scalar(conn, "SELECT SLEEP(1.5)") == 0
    finally:
        factory.close_connection(conn)


def test_no_write_connection_is_opened_to_a_server_made_read_only_since_its_check(
    own_server: MariaDBServer, make_factory: Callable[..., MySQL], scalar: Callable[..., Any]
) -> None:
    # PostgreSQL refuses such a session at connect (target_session_attrs); a MySQL primary
    # made read-only kept getting write connections until its next check, each failing at
    # its first write (error 1290).
    factory = make_factory(own_server, acquire_timeout=1, refresh_delay=60)
    factory.ready(masters_count=1, timeout=10)
    own_server.sql("SET GLOBAL read_only = ON")
    with pytest.raises(NoHostAvailableError, match="no primary"):
        factory.connect()
    conn = factory.connect(read_only=True)  # the refusal had it checked again: a replica
    try:
        assert scalar(conn, "SELECT @@global.read_only") == 1
    finally:
        factory.close_connection(conn)
    own_server.sql("SET GLOBAL read_only = OFF")
    factory.ready(masters_count=1, timeout=10)
    conn = factory.connect()
    try:
        assert scalar(conn, "SELECT @@global.read_only") == 0
    finally:
        factory.close_connection(conn)


@pytest.mark.parametrize(
    ("user", "set_as", "given_as"),
    [("latin", "s3cré-pw", "s3cré-pw".encode().decode("latin-1")), ("euro", "s3cr€t-pw", None)],
    ids=["é, as PyMySQL users give it", "€"],
)
def test_a_password_beyond_ascii_connects_as_the_mysql_client_sends_it(
    server: MariaDBServer,
    closing: Callable[[Any], Any],
    scalar: Callable[..., Any],
    user: str,
    set_as: str,
    given_as: str | None,
) -> None:
    # PyMySQL sends a str password as Latin-1: '€' failed inside it (reported as every
    # host down). For 'é', its users give the str whose Latin-1 bytes are the UTF-8 ones
    # (what the mysql client sent when the password was set): that keeps working.
    server.create_user(user, set_as, APP_DB)
    password = given_as or set_as
    dsn = f"mysql://{user}:{quote(password, safe='')}@{server.host}:{server.port}/{APP_DB}"
    factory = closing(MySQL(dsn, acquire_timeout=3))
    conn = factory.connect()
    try:
        assert scalar(conn, "SELECT CURRENT_USER()") == f"{user}@%"
    finally:
        factory.close_connection(conn)
