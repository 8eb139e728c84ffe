"""PgBouncer in front of a test-bed PostgreSQL node, on a free port of 127.0.0.1.

    with PostgresCluster(standbys=0, user="app", password="s3cret") as cluster:
        with PgBouncer(cluster) as bouncer:          # transaction pooling, 2 server connections
            dsn = bouncer.dsn()                      # postgresql://app:s3cret@127.0.0.1:PORT/postgres
            bouncer.show("POOLS")                    # the admin console

Like the servers of the test beds, PgBouncer is our own child (never `-d`), stopped by its own
pid, watched by this process's watchdog, with its configuration in a scratch directory of its
own. PgBouncer refuses to run as root: when we are root it runs as the `postgres` OS user.
Clients log in with the cluster's user and password (SCRAM when the cluster has a password),
which PgBouncer also uses towards the server; `pool_mode` and `pool_size` set how it pools.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._pg_node import Node, credentials
from qdbpool.testing._pg_setup import (
    SERVER_OS_USER,
    server_env,
    server_user_prefix,
    url,
)
from qdbpool.testing._process import (
    LOOPBACK,
    ServerUnavailable,
    chown_to,
    close_at_exit,
    find_binary,
    forget_at_exit,
    free_port,
    sweep_stale_dirs,
    wait_until,
)
from qdbpool.testing._watchdog import remove_scratch_dir, scratch_dir
from qdbpool.testing.postgres import PostgresCluster

__all__ = ["PgBouncer", "PoolMode", "ServerUnavailable", "find_pgbouncer"]

PoolMode = Literal["session", "transaction", "statement"]

DIR_PREFIX = "qdbpool-pgbouncer-"  # + creator pid + "-...", for the stale sweep
ADMIN_DB = "pgbouncer"  # PgBouncer's admin console

_swept = False


def find_pgbouncer() -> str:
    """The path of the `pgbouncer` binary; raises ServerUnavailable if it is not installed."""
    try:
        return find_binary("pgbouncer", "/usr/sbin", "/usr/bin", "/usr/local/bin")
    except ServerUnavailable as exc:
        raise ServerUnavailable(
            f"PgBouncer is not installed ({exc}); install it, e.g. `apt-get install pgbouncer`"
        ) from None


def _quoted(text: str) -> str:
    """A userlist.txt field: double quotes, with a double quote doubled."""
    return '"' + text.replace('"', '""') + '"'


class PgBouncer:
    """PgBouncer on 127.0.0.1 in front of `node` (default: the cluster's primary).

    A context manager; `start()` / `close()` by hand work too. `settings` are extra entries
    for the `[pgbouncer]` section of its configuration.
    """

    host = LOOPBACK

    def __init__(
        self,
        cluster: PostgresCluster,
        node: Node | None = None,
        *,
        pool_mode: PoolMode = "transaction",
        pool_size: int = 2,
        settings: Mapping[str, object] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.cluster = cluster
        self.node = node or cluster.primary
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.settings = dict(settings or {})
        self.startup_timeout = startup_timeout
        self.binary = find_pgbouncer()
        self.port = 0
        self._dir: Path | None = None
        self._proc: ChildProcess | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid is not None else "down"
        return f"<PgBouncer {self.host}:{self.port} -> {self.node.name} {state}>"

    @property
    def pid(self) -> int | None:
        """PgBouncer's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.running() else None

    @property
    def directory(self) -> Path:
        """The scratch directory holding the configuration and the log."""
        if self._dir is None:
            raise RuntimeError("PgBouncer has not been started (or was closed)")
        return self._dir

    def log_tail(self, lines: int = 30) -> str:
        return self._proc.log_tail(lines) if self._proc is not None else ""

    # -- start and close -----------------------------------------------------------------------

    def start(self) -> PgBouncer:
        """Start PgBouncer and return once a client gets through it to the server."""
        if self._dir is not None:
            raise RuntimeError("a PgBouncer can be started once")
        global _swept
        if not _swept:
            _swept = True
            sweep_stale_dirs(DIR_PREFIX)
        self._dir = scratch_dir(DIR_PREFIX)
        close_at_exit(self, self.close)
        try:
            self._write_userlist()
            # A free port can be taken by someone else before PgBouncer binds it: try another.
            for attempt in range(3):
                self.port = free_port(self.host)
                self._write_config()
                chown_to(self.directory, SERVER_OS_USER)
                log_path = self.directory / "pgbouncer.log"
                argv = [*server_user_prefix(), self.binary, str(self.directory / "pgbouncer.ini")]
                self._proc = ChildProcess(argv, log_path=log_path, env=server_env())
                if self._await_ready():
                    return self
                if attempt == 2 or "in use" not in self.log_tail(5):
                    raise RuntimeError(f"PgBouncer did not start:\n{self.log_tail()}")
        except BaseException:
            self.close()
            raise
        raise AssertionError("unreachable")

    def _write_userlist(self) -> None:
        user, password = credentials(self.cluster, None, None)
        (self.directory / "userlist.txt").write_text(f"{_quoted(user)} {_quoted(password or '')}\n")

    def _write_config(self) -> None:
        _, password = credentials(self.cluster, None, None)
        user = self.cluster.user
        entries: dict[str, object] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",  # TCP on 127.0.0.1 only
            "auth_type": "scram-sha-256" if password else "trust",
            "auth_file": self.directory / "userlist.txt",
            "admin_users": user,
            "stats_users": user,
            "pool_mode": self.pool_mode,
            "default_pool_size": self.pool_size,
            "max_client_conn": 200,
            # Sent by some drivers at startup; PgBouncer refuses unknown ones otherwise.
            "ignore_startup_parameters": "extra_float_digits",
            "server_connect_timeout": 5,
            "server_login_retry": 1,
        }
        entries.update(self.settings)
        lines = [
            "; Written by qdbpool.testing for a throwaway PgBouncer.\n",
            "[databases]\n",
            f"* = host={self.node.host} port={self.node.port}\n",
            "[pgbouncer]\n",
            *(f"{name} = {_ini_value(value)}\n" for name, value in entries.items()),
        ]
        (self.directory / "pgbouncer.ini").write_text("".join(lines))

    def _await_ready(self) -> bool:
        """True once a query goes through PgBouncer, False if it exited."""
        proc = self._proc
        assert proc is not None

        def outcome() -> str | None:
            if not proc.running():
                return "exited"
            # Ours, not another run's PgBouncer that won the race for the port (ours then
            # cannot bind, and exits): its clients would reach that run's server.
            config = {row["key"]: row["value"] for row in self.show("CONFIG")}
            if config.get("auth_file") != str(self.directory / "userlist.txt"):
                return None
            with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return "ready"

        try:
            result = wait_until(
                outcome, timeout=self.startup_timeout, interval=0.01, what="PgBouncer ready"
            )
        except TimeoutError as exc:
            raise RuntimeError(f"PgBouncer did not start: {exc}\n{self.log_tail()}") from None
        if result == "exited":
            proc.wait(timeout=10)
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Immediate shutdown (SIGTERM: clients are disconnected), SIGKILL after `timeout`."""
        if self._proc is not None:
            self._proc.stop(timeout=timeout)

    def close(self) -> None:
        """Stop PgBouncer by its pid and remove its directory. Safe to call twice."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                remove_scratch_dir(self._dir)
                self._dir = None
            forget_at_exit(self)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connecting ----------------------------------------------------------------------------

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        **params: object,
    ) -> str:
        """A libpq URL through PgBouncer; defaults to the cluster's user, password and dbname.

        psycopg 3 prepares statements it runs often, which transaction pooling breaks: pass
        `prepare_threshold=None` to `psycopg.connect` for such connections.
        """
        user, password = credentials(self.cluster, user, password)
        return url(user, password, [(self.host, self.port)], dbname or self.cluster.dbname, params)

    def show(self, what: str) -> list[dict[str, Any]]:
        """`SHOW <what>` on the admin console (e.g. "POOLS", "CONFIG", "SERVERS"), as dicts."""
        if not what.replace("_", "").isalnum():
            raise ValueError(f"not a SHOW command: {what!r}")
        # The admin console speaks only the simple query protocol: client-side binding.
        with psycopg.connect(
            self.dsn(dbname=ADMIN_DB),
            autocommit=True,
            connect_timeout=5,
            cursor_factory=psycopg.ClientCursor,
        ) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [column.name for column in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _ini_value(value: object) -> str:
    """A pgbouncer.ini value: numbers as they are, anything else as text (no quoting there)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    if "\n" in text:
        raise ValueError(f"a PgBouncer setting cannot hold a newline: {text!r}")
    return text
