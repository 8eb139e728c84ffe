"""One PostgreSQL server of a test-bed cluster (`Node`), and what streaming needs of it."""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql as pgsql
from psycopg.abc import Params

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._pg_setup import (
    ADMIN_DB,
    ADMIN_USER,
    lsn,
    server_env,
    server_user_prefix,
    url,
)
from qdbpool.testing._process import (
    LOOPBACK,
    children,
    free_port,
    log_tail,
    wait_until,
)

if TYPE_CHECKING:
    from qdbpool.testing.postgres import PostgresCluster

log = logging.getLogger("qdbpool.testing")

Role = Literal["primary", "standby", "retired"]
StopMode = Literal["smart", "fast", "immediate"]
SqlText = str | pgsql.SQL | pgsql.Composed  # what Node.sql accepts

_SHUTDOWN_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,  # waits for clients to leave
    "fast": signal.SIGINT,  # disconnects clients, checkpoints, exits
    "immediate": signal.SIGQUIT,  # no checkpoint: crash recovery at next start
}


class Node:
    """One PostgreSQL server of a cluster: its own data directory, port and postmaster."""

    host = LOOPBACK

    def __init__(self, cluster: PostgresCluster, name: str, role: Role) -> None:
        self.cluster = cluster
        self.name = name
        self.role: Role = role
        self.data_dir = cluster.root / name
        self.log_path = cluster.root / f"{name}.log"
        self.port = free_port(LOOPBACK)
        # The node this standby streams from (None for a primary).
        self.upstream: Node | None = None
        self._proc: ChildProcess | None = None
        self._started_once = False

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "down"
        return f"<Node {self.name} {self.role} {self.host}:{self.port} {state}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.running() else None

    def backend_pids(self) -> list[int]:
        """The postmaster's current children (checkpointer, walsenders, backends ...)."""
        pid = self.pid
        return children(pid) if pid is not None else []

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    # -- connecting ----------------------------------------------------------------------------

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        **params: object,
    ) -> str:
        """A libpq URL for this node over TCP; defaults to the cluster's user and password.

        Pass password="" for a URL without one.
        """
        user, password = credentials(self.cluster, user, password)
        return url(user, password, [(self.host, self.port)], dbname or self.cluster.dbname, params)

    def sql(
        self,
        query: SqlText,
        params: Params | None = None,
        *,
        dbname: str | None = None,
        timeout: float = 30.0,
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over the Unix socket (autocommit); return its rows.

        A server-side statement_timeout bounds it, so a test can never hang here.
        """
        with self.admin_connection(dbname, statement_timeout=timeout) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def admin_sql(
        self, query: SqlText, params: Params | None = None, timeout: float = 30.0
    ) -> list[tuple[Any, ...]]:
        """The test bed's own statements: in the admin database, which every node has."""
        return self.sql(query, params, dbname=ADMIN_DB, timeout=timeout)

    def admin_connection(
        self,
        dbname: str | None = None,
        *,
        statement_timeout: float = 30.0,
        **gucs: str,
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit connection as the superuser over the Unix socket; close it."""
        settings = {"statement_timeout": f"{int(statement_timeout * 1000)}", **gucs}
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        return psycopg.connect(
            host=str(self.cluster.socket_dir),
            port=self.port,
            user=ADMIN_USER,
            dbname=dbname or self.cluster.dbname,
            autocommit=True,
            connect_timeout=5,
            options=options,
        )

    def is_in_recovery(self) -> bool:
        """True on a standby (the server's own view, not the test bed's bookkeeping)."""
        return bool(self.admin_sql("SELECT pg_is_in_recovery()")[0][0])

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start the postmaster on this node's port; return once it accepts connections."""
        if self.running:
            return
        self.launch()
        self.await_started(timeout)

    def launch(self) -> None:
        """Start the postmaster without waiting for it (the cluster starts nodes side by side)."""
        argv = [
            *server_user_prefix(),
            str(self.cluster.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.cluster.socket_dir),
            "-c", f"cluster_name={self.name}",  # names the processes in ps output
        ]  # fmt: skip
        self._proc = ChildProcess(argv, log_path=self.log_path, env=server_env())

    def await_started(self, timeout: float | None = None) -> None:
        """Wait until a postmaster started by `launch()` accepts connections."""
        timeout = timeout if timeout is not None else self.cluster.startup_timeout
        # A free port we picked can be taken by someone else before the server binds it: pick
        # another then, but only at the first start; later starts must keep the node's port.
        retries = 0 if self._started_once else 2
        while not self._await_ready(timeout):
            if retries == 0 or "could not bind" not in self.log_tail(10):
                raise RuntimeError(f"PostgreSQL {self.name} did not start:\n{self.log_tail()}")
            retries -= 1
            self.port = free_port(LOOPBACK)
            self.launch()
        self._started_once = True

    def _await_ready(self, timeout: float) -> bool:
        """True once the launched postmaster accepts connections, False if it exited."""
        proc = self._proc
        assert proc is not None, "launch() first"
        try:
            outcome = wait_until(
                lambda: self._startup_outcome(proc),
                timeout=timeout,
                interval=0.005,
                what=f"PostgreSQL {self.name} accepting connections",
            )
        except BaseException:
            proc.kill()
            raise
        if outcome == "exited":
            proc.wait(timeout=10)
            return False
        return True

    def _startup_outcome(self, proc: ChildProcess) -> str | None:
        """'ready' once the postmaster accepts connections, 'exited' if it died, else None."""
        if not proc.running():
            return "exited"
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        # Line 1 is the pid (a stale file from a killed run names another); line 8 the status.
        if (
            len(lines) >= 8
            and lines[0] == str(proc.pid)
            and lines[7].strip() in ("ready", "standby")
        ):
            return "ready"
        return None

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut down cleanly ("fast" by default), SIGKILL after `timeout`; always reaps."""
        proc = self._proc
        if proc is None:
            return
        self.begin_stop(mode)
        if proc.wait(timeout=timeout) is None:
            log.warning("PostgreSQL %s ignored a %s shutdown; killing it", self.name, mode)
            proc.kill()

    def begin_stop(self, mode: StopMode = "fast") -> None:
        """Ask the postmaster to shut down, without waiting (`stop()` waits)."""
        if self._proc is not None:
            self._proc.send_signal(_SHUTDOWN_SIGNALS[mode])

    def kill(self) -> None:
        """Crash the node: SIGKILL the postmaster and every child of it, then reap them all."""
        if self._proc is not None:
            self._proc.kill()

    def release_shared_memory(self) -> None:
        """Remove the SysV segment a killed postmaster leaves for its restart to reclaim.

        For when the node will not start again: once its directory is deleted nothing would
        reclaim the segment, and each one counts against the system's limit.
        """
        if self._proc is not None and not self._proc.running():
            self._proc.release_shared_memory()

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    # -- replication ---------------------------------------------------------------------------

    def promote(self, timeout: float = 30.0) -> None:
        """Turn this standby into a primary; returns once it accepts writes."""
        promoted = self.admin_sql(
            "SELECT pg_promote(true, %s)", [int(timeout)], timeout=timeout + 5
        )
        if not promoted[0][0]:
            raise RuntimeError(
                f"{self.name} was not promoted within {timeout}s:\n{self.log_tail()}"
            )
        for node in self.cluster.nodes:
            if node.role == "primary" and node is not self:
                node.role = "retired"  # it may still run: starting it again makes a split brain
        self.role = "primary"
        self.upstream = None

    def repoint(self, new_primary: Node, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Make this standby stream from `new_primary` (no restart needed since PostgreSQL 13).

        With recovery_target_timeline 'latest' (the default) it follows the promoted node onto
        its new timeline, provided it had not received more WAL than the promoted node had.
        """
        if new_primary is self:
            raise ValueError(f"{self.name} cannot stream from itself")
        conninfo = replication_conninfo(new_primary, self.name)
        self.admin_sql(
            pgsql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(pgsql.Literal(conninfo))
        )
        self.admin_sql("SELECT pg_reload_conf()")
        self.upstream = new_primary
        if wait:
            wait_streaming([self], timeout)

    def set_read_only(self, read_only: bool = True, timeout: float = 10.0) -> None:
        """Make new transactions read-only (SQLSTATE 25006 on writes) or writable again.

        Returns once new sessions see the setting. Existing sessions pick it up at their next
        statement (the server processes a configuration reload before executing a command);
        a transaction already open keeps the mode it began with.
        """
        value = "on" if read_only else "off"
        self.admin_sql(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
        self.admin_sql("SELECT pg_reload_conf()")
        # pg_reload_conf() only signals the postmaster; wait until it has re-read the files.
        # The postmaster signals its children in the same step, before forking new sessions.
        wait_until(
            lambda: self.admin_sql("SHOW default_transaction_read_only")[0][0] == value,
            timeout=timeout,
            interval=0.005,
            what=f"{self.name} default_transaction_read_only={value}",
        )

    def replay_lsn(self) -> int | None:
        """How far this standby has replayed (None on a primary)."""
        text = self.admin_sql("SELECT pg_last_wal_replay_lsn()::text")[0][0]
        return lsn(text) if text else None

    def receive_lsn(self) -> int | None:
        """How much WAL this standby has received from its upstream (None on a primary)."""
        text = self.admin_sql("SELECT pg_last_wal_receive_lsn()::text")[0][0]
        return lsn(text) if text else None

    def received_from_dead_upstream(self) -> int | None:
        """receive_lsn() once this standby has read all its (killed) upstream sent, or None
        while its WAL receiver still streams: until it reads the end of the stream, WAL
        still in its socket is not counted yet."""
        streaming, text = self.admin_sql(
            "SELECT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming'),"
            " pg_last_wal_receive_lsn()::text"
        )[0]
        return None if streaming else lsn(text) if text else 0


def credentials(
    cluster: PostgresCluster, user: str | None, password: str | None
) -> tuple[str, str | None]:
    """Default to the cluster's user; its password only goes with its own name."""
    user = user or cluster.user
    if password is None and user == cluster.user:
        password = cluster.password
    return user, password or None


def replication_conninfo(upstream: Node, application_name: str) -> str:
    """How a standby reaches `upstream`; application_name lets the primary's
    pg_stat_replication say which node is which."""
    return (
        f"host={upstream.host} port={upstream.port} user={ADMIN_USER} "
        f"application_name={application_name} connect_timeout=2"
    )


def wait_streaming(standbys: Sequence[Node], timeout: float) -> None:
    """Wait until each of `standbys` streams from its upstream."""
    by_upstream: dict[Node, set[str]] = {}
    for node in standbys:
        if node.upstream is None:
            raise RuntimeError(f"{node.name} has no upstream to stream from")
        by_upstream.setdefault(node.upstream, set()).add(node.name)
    for upstream, names in by_upstream.items():

        def streaming(upstream: Node = upstream, names: set[str] = names) -> bool:
            rows = upstream.admin_sql(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
            )
            return names <= {row[0] for row in rows}

        try:
            wait_until(streaming, timeout=timeout, interval=0.01, what="standbys streaming")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {n.name}:\n{n.log_tail(10)}" for n in standbys)
            raise TimeoutError(
                f"{sorted(names)} not streaming from {upstream.name}: {exc}\n{logs}"
            ) from None
