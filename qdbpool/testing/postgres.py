"""A real PostgreSQL streaming-replication cluster on 127.0.0.1, for tests, demos and benchmarks.

    with PostgresCluster(standbys=2, user="app", password="s3cret") as cluster:
        dsn = cluster.multi_host_dsn()          # postgresql://app:s3cret@127.0.0.1:p1,...:p3/postgres
        cluster.primary.sql("CREATE TABLE t (x int)")
        cluster.wait_replicated()
        new_primary = cluster.failover()        # SIGKILL the primary, promote, re-point the rest

Choices, and why:

* Servers are our own children (`postgres -D ...`, never `pg_ctl start`): PID 1 here does not
  reap orphans, and a zombie postmaster keeps its data directory locked forever.
* When we run as root the servers run as the OS user `postgres` through `setpriv`, which execs
  in place. `runuser` would stay in between as a watching parent, so the pid we hold would not
  be the postmaster's and a fast-shutdown signal would not reach it as such.
* Everything lives on tmpfs with fsync off: a 3-node cluster starts in about 0.4 s here.
  `initdb` runs once per process; every node of every cluster starts as a copy of that
  template, standbys included (a copy of a cleanly shut down data directory is a valid base
  backup, and pg_basebackup was the slowest step by far). Only `rebuild_standby`, which needs
  the current primary's data, runs pg_basebackup.
* Authentication: the test bed itself talks to each node over its Unix socket, in a directory
  only the server user (and root) can enter, with `trust`. Standbys stream over loopback TCP as
  the superuser `postgres`, also `trust`. Clients over TCP get `trust` too, unless the cluster
  has a password: then every TCP client login needs SCRAM, so a wrong password really fails.
* A postmaster's children each call setsid(), so killing the postmaster's process group does
  not reach them. `kill()` freezes the postmaster, SIGKILLs its children and then it, and reaps
  them all (this process becomes a child subreaper so that the orphans come back to us).
* If this process dies without cleaning up, even by SIGKILL, its watchdog kills its servers
  and removes their directories. Every cluster directory is also named after the pid that
  made it, so a later run sweeps what a process that died with its watchdog left behind.
* A forked child that exits normally leaves its parent's clusters alone.

Process hygiene (tree kill, reaping, the watchdog, stale sweeps) is shared with the MariaDB
test bed: `_process.py`, `_child.py`, `_watchdog.py`. Binaries, settings and the initdb
template are in `_pg_setup.py`; one server is a `Node` (`_pg_node.py`).

Not thread-safe: drive a cluster from one thread. `Node.sql` opens its own connection per call.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from psycopg import sql as pgsql

from qdbpool.testing._pg_node import (
    Node,
    Role,
    credentials,
    replication_conninfo,
    wait_streaming,
)
from qdbpool.testing._pg_setup import (
    ADMIN_DB,
    ADMIN_USER,
    DIR_PREFIX,
    SERVER_OS_USER,
    append_settings,
    find_postgres_bindir,
    lsn,
    new_scratch_dir,
    run_tools,
    template,
    url,
)
from qdbpool.testing._process import (
    ServerUnavailable,
    chown_to,
    close_at_exit,
    forget_at_exit,
    process_alive,
    scratch_root,
    sweep_stale_dirs,
    wait_until,
)
from qdbpool.testing._watchdog import remove_scratch_dir

__all__ = [
    "Node",
    "PostgresCluster",
    "Role",
    "ServerUnavailable",
    "find_postgres_bindir",
    "process_alive",
    "sweep_stale_clusters",
]

_swept = False


def sweep_stale_clusters(root: Path | None = None) -> list[Path]:
    """Kill servers and remove directories left behind by test processes that died uncleanly.

    Only directories named for a process that no longer runs are touched, and only servers
    whose command line names such a directory are killed. Returns the directories removed.
    """
    return sweep_stale_dirs(DIR_PREFIX, root or scratch_root())


class PostgresCluster:
    """One primary and `standbys` streaming standbys on 127.0.0.1; a context manager.

    `user` is the role clients use (created if it is not the superuser, with LOGIN, CREATEDB,
    pg_monitor and CREATE on the database's public schema); with a `password` every TCP login
    needs SCRAM. `dbname` is created owned by `user` unless it is "postgres". `settings` are
    extra postgresql.conf entries for every node.
    """

    def __init__(
        self,
        standbys: int = 2,
        *,
        user: str = ADMIN_USER,
        password: str | None = None,
        dbname: str = "postgres",
        settings: Mapping[str, object] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if standbys < 0:
            raise ValueError("standbys must be >= 0")
        self.user = user
        self.password = password
        self.dbname = dbname
        self.settings = dict(settings or {})
        self.startup_timeout = startup_timeout
        self._standby_count = standbys
        self.nodes: list[Node] = []
        self._closed = False
        self._root: Path | None = None
        self.bindir = find_postgres_bindir()

    def __repr__(self) -> str:
        return f"<PostgresCluster {self.nodes!r}>"

    # -- layout --------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The scratch directory holding every node's data directory, logs and sockets."""
        if self._root is None:
            raise RuntimeError("the cluster has not been started")
        return self._root

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def primary(self) -> Node:
        for node in self.nodes:
            if node.role == "primary":
                return node
        raise RuntimeError("the cluster has no primary (not started?)")

    @property
    def standbys(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "standby"]

    # -- start and close -----------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Bring every node up and wait until all standbys stream. Cleans up on failure."""
        if self._root is not None:
            raise RuntimeError("a PostgresCluster can be started once")
        global _swept
        if not _swept:
            _swept = True
            sweep_stale_clusters()
        close_at_exit(self, self.close)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        template_dir = template(self.bindir)
        self._root = new_scratch_dir("")
        os.chmod(self._root, 0o700)
        self.socket_dir.mkdir(mode=0o700)

        primary = Node(self, "node0", "primary")
        standbys = [Node(self, f"node{i}", "standby") for i in range(1, self._standby_count + 1)]
        self.nodes = [primary, *standbys]
        # Every node starts as a copy of the same never-started template. A copy of a cleanly
        # shut down data directory is a valid base backup, and its WAL is exactly where the
        # primary's continues, so the standbys need no pg_basebackup (the slowest step by far).
        for node in self.nodes:
            shutil.copytree(template_dir, node.data_dir)
            self._write_hba(node.data_dir)
            if self.settings:
                append_settings(node.data_dir / "postgresql.conf", self.settings, "test settings")
        for node in standbys:
            self._configure_standby(node, primary)
        chown_to(self._root, SERVER_OS_USER)

        for node in self.nodes:  # side by side: each takes tens of milliseconds to come up
            node.launch()
        primary_port = primary.port
        for node in self.nodes:
            node.await_started()
        if primary.port != primary_port:  # it had to move to another port
            for node in standbys:
                node.repoint(primary, wait=False)
        self._create_roles()
        wait_streaming(standbys, self.startup_timeout)
        # The roles and database just made must be usable on the standbys too.
        self.wait_replicated(self.startup_timeout)

    def _configure_standby(self, node: Node, upstream: Node) -> None:
        # Written by hand rather than by pg_basebackup --write-recovery-conf, whose conninfo
        # names root's ~/.pgpass and every libpq default; ours is short and names the node.
        (node.data_dir / "standby.signal").touch()
        append_settings(
            node.data_dir / "postgresql.auto.conf",
            {"primary_conninfo": replication_conninfo(upstream, node.name)},
            "standby of " + upstream.name,
        )
        node.role = "standby"
        node.upstream = upstream

    def _write_hba(self, data_dir: Path) -> None:
        client_auth = "scram-sha-256" if self.password else "trust"
        (data_dir / "pg_hba.conf").write_text(
            "# Written by qdbpool.testing for a throwaway cluster.\n"
            "# The test bed itself: Unix socket in a directory only the server user can enter.\n"
            "local  all          all                     trust\n"
            "# Standbys stream from the primary over loopback as the superuser.\n"
            f"host   replication  {ADMIN_USER}  127.0.0.1/32  trust\n"
            "# Clients: a password when the cluster has one, so wrong credentials really fail.\n"
            f"host   all          all       127.0.0.1/32  {client_auth}\n"
        )

    def _create_roles(self) -> None:
        primary = self.primary
        user = pgsql.Identifier(self.user)
        if self.user != ADMIN_USER:
            primary.admin_sql(
                pgsql.SQL("CREATE ROLE {} LOGIN CREATEDB IN ROLE pg_monitor").format(user)
            )
        if self.password:
            primary.admin_sql(
                pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(user, pgsql.Literal(self.password))
            )
        if self.dbname != "postgres":
            primary.admin_sql(
                pgsql.SQL("CREATE DATABASE {} OWNER {}").format(pgsql.Identifier(self.dbname), user)
            )
        elif self.user != ADMIN_USER:
            primary.admin_sql(pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(user))

    def close(self) -> None:
        """Stop every node by its own pid (all at once) and remove the data directories.

        Safe to call twice, and after a failed or partial start.
        """
        if self._closed:
            return
        self._closed = True
        try:
            # Immediate shutdown: no checkpoint to wait for, the data is thrown away anyway.
            # Signal all first so that the nodes shut down in parallel.
            for node in self.nodes:
                node.begin_stop("immediate")
            for node in self.nodes:
                node.stop("immediate", timeout=10)
                node.release_shared_memory()
        finally:
            if self._root is not None:
                remove_scratch_dir(self._root)
            forget_at_exit(self)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- URLs ----------------------------------------------------------------------------------

    def multi_host_dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        *,
        nodes: Sequence[Node] | None = None,
        **params: object,
    ) -> str:
        """postgresql://user:pw@127.0.0.1:p1,127.0.0.1:p2,.../dbname over `nodes` (all)."""
        user, password = credentials(self, user, password)
        hosts = [(node.host, node.port) for node in (nodes if nodes is not None else self.nodes)]
        return url(user, password, hosts, dbname or self.dbname, params)

    # -- replication ---------------------------------------------------------------------------

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until every running standby streams from its upstream."""
        wait_streaming([node for node in self.standbys if node.running], timeout)

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running standby has replayed everything committed on the primary."""
        with self.primary.admin_connection(
            ADMIN_DB, synchronous_commit="on", default_transaction_read_only="off"
        ) as conn:
            # A barrier: a transaction that writes WAL and commits synchronously flushes all
            # WAL before it, including asynchronous commits still waiting for the walwriter.
            # (Taking an xid is not enough: a transaction that wrote no WAL of its own commits
            # asynchronously whatever synchronous_commit says.) Everything committed so far is
            # then below the flush position, which is what walsenders send.
            conn.execute("SELECT pg_logical_emit_message(true, 'qdbpool.testing', 'barrier')")
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        if row is None:
            raise RuntimeError("pg_current_wal_flush_lsn() returned nothing")
        target = lsn(row[0])
        for node in self.standbys:
            if node.running:

                def caught_up(node: Node = node) -> bool:
                    return (node.replay_lsn() or 0) >= target

                wait_until(
                    caught_up, timeout=timeout, interval=0.005, what=f"{node.name} at {row[0]}"
                )

    def failover(self, to: Node | None = None, *, timeout: float = 30.0) -> Node:
        """What an orchestrator does when the primary dies: kill it, promote, re-point the rest.

        Promotes `to`, or else the standby that received the most WAL (only that one can be
        followed by all the others). Returns the new primary once every standby streams from it.
        """
        candidates = [node for node in self.standbys if node.running]
        if not candidates:
            raise RuntimeError("no running standby to promote")
        if to is not None and to not in candidates:
            raise ValueError(f"{to.name} is not a running standby")
        self.primary.kill()
        target = to or self._most_received(candidates, timeout)
        target.promote(timeout)
        others = [node for node in candidates if node is not target]
        for node in others:
            node.repoint(target, wait=False)
        wait_streaming(others, timeout)
        return target

    def _most_received(self, candidates: Sequence[Node], timeout: float) -> Node:
        """The standby that received the most WAL from the killed primary. Compared only
        once each has read the end of its stream: sooner, a standby with WAL still in its
        socket looks behind, and promoting the other leaves it unable to follow."""
        received: dict[Node, int] = {}

        def all_done() -> bool:
            for node in candidates:
                if node not in received:
                    position = node.received_from_dead_upstream()
                    if position is not None:
                        received[node] = position
            return len(received) == len(candidates)

        wait_until(
            all_done, timeout=timeout, interval=0.002, what="standbys at the end of the stream"
        )
        return max(candidates, key=received.__getitem__)

    def rebuild_standby(self, node: Node, *, timeout: float = 30.0) -> None:
        """Throw away `node`'s data and make it a fresh standby of the current primary.

        Brings a retired (failed) primary back into the cluster after a failover; it keeps
        its name and port.
        """
        primary = self.primary
        if node is primary:
            raise ValueError(f"{node.name} is the primary")
        node.kill()
        shutil.rmtree(node.data_dir, ignore_errors=True)
        argv = [
            str(self.bindir / "pg_basebackup"),
            f"--pgdata={node.data_dir}",
            f"--dbname={replication_conninfo(primary, node.name)}",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
            "--no-manifest",  # its checksums cost time and nobody verifies this backup
        ]
        run_tools([argv], logs=[self.root / f"{node.name}.basebackup.log"], timeout=timeout)
        # The copy carries the primary's own postgresql.auto.conf; our settings come after.
        self._configure_standby(node, primary)
        chown_to(node.data_dir, SERVER_OS_USER)
        node.start(timeout)
        wait_streaming([node], timeout)
