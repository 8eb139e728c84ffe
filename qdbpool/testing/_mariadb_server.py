"""One throw-away MariaDB server (`MariaDBServer`): started, stopped and killed by its own
pid, with SQL and replication helpers for tests."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pymysql
import pymysql.cursors

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._mariadb_setup import (
    INNODB_ARGS,
    SERVER_USER,
    MariaDBStartError,
    gtid_seqs,
    identifier,
    make_private_dir,
    mariadb_binaries,
    mysql_url,
    sweep_stale_servers,
    template_datadir,
    user_args,
)
from qdbpool.testing._process import (
    LOOPBACK,
    chown_to,
    close_at_exit,
    forget_at_exit,
    free_port,
    wait_until,
)
from qdbpool.testing._watchdog import remove_scratch_dir

log = logging.getLogger("qdbpool.testing.mariadb")


class MariaDBServer:
    """One mariadbd on 127.0.0.1, on a free port, with a private tmpfs datadir.

    The server starts in the constructor; use it as a context manager (or call `close()`)
    to stop it by its own pid and delete its directory. `root` connects over TCP with an
    empty password; only 127.0.0.1 is bound.
    """

    host: str = LOOPBACK

    def __init__(
        self,
        *,
        server_id: int = 1,
        log_bin: bool = False,
        read_only: bool = False,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        """Start a server. `log_bin` enables a ROW binlog with GTIDs (for primaries and
        replicas that may be promoted); `read_only` starts it with `--read-only=ON`."""
        # Everything close() needs is set before anything that can fail.
        self._child: ChildProcess | None = None
        self._base: Path | None = None
        self._closed = False
        self.server_id = server_id
        self.log_bin = log_bin
        self.read_only = read_only
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.port = 0
        self._cpus: set[int] | None = None
        #: Seconds the last start() took from spawning mariadbd to the first answered query.
        self.startup_seconds = 0.0
        sweep_stale_servers()
        close_at_exit(self, self.close)
        try:
            self._base = make_private_dir()
            self._copy_template()
            self._start_on_a_free_port()
        except BaseException:
            self.close()
            raise

    # ---- paths and identity

    @property
    def base_dir(self) -> Path:
        """The directory holding the datadir, socket, pid file and logs."""
        if self._base is None:
            raise RuntimeError("server directory already removed")
        return self._base

    @property
    def datadir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_path(self) -> Path:
        return self.base_dir / "mariadbd.sock"

    @property
    def error_log(self) -> Path:
        return self.datadir / "mariadbd.err"

    @property
    def pid(self) -> int | None:
        """The pid of the running mariadbd (our direct child), or None when it is down."""
        if self._child is None or not self._child.running():
            return None
        return self._child.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<MariaDBServer {self.host}:{self.port} id={self.server_id} {state}>"

    # ---- lifecycle

    def _copy_template(self) -> None:
        shutil.copytree(template_datadir(), self.datadir, symlinks=True)
        chown_to(self.datadir, SERVER_USER)

    def _start_on_a_free_port(self, attempts: int = 3) -> None:
        # free_port() cannot reserve the port: another process may grab it before mariadbd
        # binds, so a bind failure is retried on a fresh port.
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            try:
                self.start()
                return
            except MariaDBStartError as exc:
                if attempt == attempts or "already in use" not in str(exc):
                    raise
                log.debug("port %d was taken, retrying on another one", self.port)

    def _argv(self) -> list[str]:
        mariadbd, _ = mariadb_binaries()
        argv = [
            mariadbd,
            "--no-defaults",  # must come first: never read /etc/mysql or ~/.my.cnf
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--pid-file={self.base_dir / 'mariadbd.pid'}",
            f"--log-error={self.error_log}",
            "--skip-name-resolve",
            *user_args(),
            f"--server-id={self.server_id}",
            *INNODB_ARGS,
            "--max-connections=500",
            f"--read-only={'ON' if self.read_only else 'OFF'}",
            "--relay-log=relay-bin",  # not named after the host name
            # Replicas reconnect quickly after their primary restarts (default: 60 s).
            "--slave-net-timeout=10",
        ]
        if self.log_bin:
            argv += [
                "--log-bin=mariadb-bin",
                "--binlog-format=ROW",
                "--sync-binlog=0",
                # A replica keeps what it applied in its own binlog, so it can be promoted.
                "--log-slave-updates=ON",
            ]
        else:
            argv.append("--skip-log-bin")
        return argv + self.extra_args

    def start(self) -> None:
        """Start (or restart) mariadbd on the same port and datadir; waits until it answers."""
        if self._closed:
            raise RuntimeError("server is closed")
        if self.running:
            return
        started = time.monotonic()
        self._child = ChildProcess(self._argv(), log_path=self.base_dir / "mariadbd.out")
        self._wait_ready()
        self.startup_seconds = time.monotonic() - started
        self._apply_affinity()
        log.debug("%r ready in %.2fs", self, self.startup_seconds)

    def _wait_ready(self) -> None:
        child = self._child
        assert child is not None

        def probe() -> str | None:
            if not child.running():
                return "exited"  # stop polling: it will never answer
            # Short timeouts: a listener that never greets (a PostgreSQL on the port) held
            # one probe for the default 60 s. And the server must be ours: another run's
            # on this port (it won the race for it) answers as well, while ours cannot bind.
            [(datadir,)] = self.sql(
                "SELECT @@datadir", connect_timeout=1, read_timeout=1, write_timeout=1
            )
            return "ready" if Path(datadir).resolve() == self.datadir.resolve() else None

        try:
            outcome = wait_until(probe, timeout=self.start_timeout, what=f"mariadbd on {self.port}")
        except TimeoutError as exc:
            self._kill_child()
            raise MariaDBStartError(f"{exc}\n{self.log_tail()}") from None
        if outcome == "exited":
            self._kill_child()  # reaps it
            raise MariaDBStartError(f"mariadbd exited during startup:\n{self.log_tail()}")

    def pin_to_cpus(self, cpus: Collection[int]) -> None:
        """Pin every thread of the server to `cpus`, now and after each `start()`.

        Benchmarks put the client and the server on the same CPU: loopback throughput
        swings ~3x when they sit on different ones.
        """
        self._cpus = set(cpus)
        self._apply_affinity()

    def _apply_affinity(self) -> None:
        pid = self.pid
        if self._cpus is None or pid is None:
            return
        # sched_setaffinity(pid) moves a single thread, so every existing thread is moved;
        # connection threads spawned later inherit the main thread's mask.
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.sched_setaffinity(int(task.name), self._cpus)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's error log (and of its stdout/stderr)."""
        parts = []
        with contextlib.suppress(OSError, RuntimeError):
            parts.append(
                "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
            )
        if self._child is not None:
            parts.append(self._child.log_tail(lines))
        return "\n".join(p for p in parts if p)

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (SIGTERM), SIGKILL after `timeout`; always reaped. Data is kept."""
        if self._child is not None:
            self._child.stop(signal.SIGTERM, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server and reap it, like a crash; `start()` runs crash recovery."""
        self._kill_child()

    def _kill_child(self) -> None:
        if self._child is not None:
            self._child.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Kill the server by its own pid, reap it and delete its directory. Idempotent."""
        self._closed = True
        try:
            # The data is about to be deleted, so a clean shutdown would only cost time.
            self._kill_child()
        finally:
            if self._base is not None:
                remove_scratch_dir(self._base)
                self._base = None
            forget_at_exit(self)

    def __enter__(self) -> MariaDBServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- SQL

    def dsn(self, user: str = "root", password: str = "", database: str = "") -> str:
        """`mysql://user:password@127.0.0.1:PORT/database` (user and password %-encoded)."""
        return mysql_url(user, password, [f"{self.host}:{self.port}"], database)

    def connect(
        self,
        user: str = "root",
        password: str = "",
        database: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """A new autocommit PyMySQL connection; the caller closes it."""
        options: dict[str, Any] = {
            "connect_timeout": 5,
            # No query of ours should block forever on a stopped or frozen server.
            "read_timeout": 60,
            "write_timeout": 60,
            "autocommit": True,
        }
        options.update(kwargs)
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            database=database,
            **options,
        )

    def sql(self, query: str, params: Any = None, **connect_kwargs: Any) -> list[tuple[Any, ...]]:
        """Run one statement as root on a fresh connection; returns its rows (maybe none)."""
        with contextlib.closing(self.connect(**connect_kwargs)) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())

    def sql_dicts(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """Like `sql()`, with each row as a dict keyed by column name."""
        connection = self.connect(cursorclass=pymysql.cursors.DictCursor)
        with contextlib.closing(connection) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())

    def create_user(self, name: str, password: str, database: str) -> None:
        """Create `database` and user `name`@'%' with all privileges on it (and nothing else)."""
        db = identifier(database)
        identifier(name)
        self.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
        self.sql("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (name, password))
        self.sql(f"GRANT ALL PRIVILEGES ON {db}.* TO %s@'%%'", (name,))

    def set_global(self, name: str, value: Any) -> None:
        """`SET GLOBAL name = value`, e.g. ('read_only', 'ON') or ('wait_timeout', 1).

        Session variables such as wait_timeout are copied at connect time, so only
        connections opened afterwards see the new value.
        """
        self.sql(f"SET GLOBAL {identifier(name)} = %s", (value,))

    def get_global(self, name: str) -> Any:
        return self.sql(f"SELECT @@GLOBAL.{identifier(name)}")[0][0]

    def set_read_only(self, read_only: bool) -> None:
        """Make the server read-only (for users without READ_ONLY ADMIN) or writable."""
        self.set_global("read_only", "ON" if read_only else "OFF")

    def kill_connection(self, connection_id: int) -> None:
        """Server-side `KILL <id>`: the client sees its connection dropped on next use."""
        self.sql(f"KILL CONNECTION {int(connection_id)}")

    # ---- replication

    def replica_status(self) -> dict[str, Any]:
        """`SHOW SLAVE STATUS` as a dict; empty when this server replicates from nobody."""
        rows = self.sql_dicts("SHOW SLAVE STATUS")
        return rows[0] if rows else {}

    def replicate_from(
        self,
        primary: MariaDBServer,
        user: str,
        password: str,
        *,
        use_gtid: str = "slave_pos",
        timeout: float = 30.0,
    ) -> None:
        """Point this server at `primary` with GTID and wait until both threads run.

        `use_gtid="slave_pos"` replays the primary's binlog from what this server applied
        as a replica; "current_pos" also counts what it wrote itself (for a demoted primary).
        """
        if use_gtid not in ("slave_pos", "current_pos"):
            raise ValueError(f"use_gtid must be slave_pos or current_pos, not {use_gtid!r}")
        self.sql("STOP SLAVE")
        self.sql(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s,"
            " MASTER_PASSWORD=%s, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1,"
            f" MASTER_USE_GTID={use_gtid}",
            (primary.host, primary.port, user, password),
        )
        self.sql("START SLAVE")
        self.wait_replicating(timeout=timeout)

    def wait_replicating(self, timeout: float = 30.0) -> None:
        """Wait until `SHOW SLAVE STATUS` shows the IO and SQL threads both running."""

        def both_running() -> bool:
            status = self.replica_status()
            return (
                status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"
            )

        try:
            wait_until(both_running, timeout=timeout, interval=0.05, what=f"{self!r} replicating")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self._replication_errors()}") from None

    def stop_replicating(self) -> None:
        """Stop and forget replication (`STOP SLAVE; RESET SLAVE ALL`)."""
        self.sql("STOP SLAVE")
        self.sql("RESET SLAVE ALL")

    def wait_for_gtid(self, gtid_pos: str, timeout: float = 30.0) -> None:
        """Wait until this server's GTID position has reached `gtid_pos` in every domain.

        Compares with @@gtid_current_pos rather than using MASTER_GTID_WAIT(), which only
        looks at gtid_slave_pos: a demoted primary never sees its own old writes there.
        """
        target = gtid_seqs(gtid_pos)

        def caught_up() -> bool:
            reached = gtid_seqs(str(self.get_global("gtid_current_pos")))
            return all(reached.get(domain, -1) >= seq for domain, seq in target.items())

        try:
            wait_until(caught_up, timeout=timeout, what=f"{self!r} at GTID {gtid_pos}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self._replication_errors()}") from None

    def _replication_errors(self) -> str:
        try:
            status = self.replica_status()
        except pymysql.MySQLError as exc:
            return f"replica status unavailable: {exc}"
        keys = ("Slave_IO_Running", "Slave_SQL_Running", "Last_IO_Error", "Last_SQL_Error")
        return ", ".join(f"{k}={status.get(k)!r}" for k in keys)
