"""Real, throw-away MariaDB servers on 127.0.0.1 for tests, demos and benchmarks.

    with MariaDBServer() as srv:
        srv.create_user("app", "secret", "appdb")
        dsn = srv.dsn("app", "secret", "appdb")     # mysql://app:secret@127.0.0.1:PORT/appdb

    with MariaDBCluster(replicas=1) as cl:          # primary + read-only GTID replica
        cl.create_user("app", "secret", "appdb")
        dsn = cl.multi_host_dsn("app", "secret", "appdb")
        cl.switch_roles()                           # the replica becomes the primary

Every server is our own child process (never mysqld_safe, never daemonized), on its own free
port, with its own data directory under tmpfs, started with `--no-defaults` so that no
/etc/mysql configuration (and no server already running on this machine) is ever touched.
`mariadb-install-db` runs once per process; each server gets a copy of that template.
Servers are stopped by their own pid and their directories removed on `close()`; an atexit
hook does the same for any server a failed test left behind (not in a forked child, which
leaves its parent's servers alone). If this process dies without cleaning up, even by SIGKILL,
its watchdog kills its servers; a later run sweeps directories a dead process left behind.
Process hygiene is shared with the PostgreSQL test bed (`_process.py`, `_child.py`,
`_watchdog.py`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from qdbpool.testing._mariadb_server import MariaDBServer
from qdbpool.testing._mariadb_setup import (
    MariaDBStartError,
    mariadb_binaries,
    mysql_url,
)
from qdbpool.testing._process import ServerUnavailable

__all__ = [
    "MariaDBCluster",
    "MariaDBReplicaPair",
    "MariaDBServer",
    "MariaDBStartError",
    "ServerUnavailable",
    "mariadb_binaries",
]


# --------------------------------------------------------------------------- clusters


class MariaDBCluster:
    """A primary with a binlog and `replicas` read-only GTID replicas, all on 127.0.0.1.

    Every node has a ROW binlog with `log_slave_updates`, so any replica can be promoted
    (`switch_roles()` / `promote()`). Users created through the cluster are created on the
    primary and reach the replicas by replication.
    """

    repl_user = "qdbpool_repl"

    def __init__(self, replicas: int = 1, *, timeout: float = 60.0) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.timeout = timeout
        self.repl_password = secrets.token_hex(12)
        self._nodes: list[MariaDBServer] = []
        try:
            self._start(replicas)
        except BaseException:
            self.close()
            raise

    def _start(self, replicas: int) -> None:
        started = time.monotonic()
        primary = MariaDBServer(server_id=1, log_bin=True, start_timeout=self.timeout)
        self._nodes.append(primary)
        # Created before any replica attaches, it is in the binlog and so reaches every
        # replica too: a promoted replica can serve the others without further setup.
        primary.sql("CREATE USER %s@'%%' IDENTIFIED BY %s", (self.repl_user, self.repl_password))
        primary.sql("GRANT REPLICATION SLAVE ON *.* TO %s@'%%'", (self.repl_user,))
        for n in range(replicas):
            replica = MariaDBServer(
                server_id=2 + n, log_bin=True, read_only=True, start_timeout=self.timeout
            )
            self._nodes.append(replica)
            replica.replicate_from(
                primary, self.repl_user, self.repl_password, timeout=self.timeout
            )
        self.wait_replicated()
        #: Seconds from the first spawn to every replica running and caught up.
        self.startup_seconds = time.monotonic() - started

    # ---- topology

    @property
    def primary(self) -> MariaDBServer:
        return self._nodes[0]

    @property
    def replicas(self) -> list[MariaDBServer]:
        return self._nodes[1:]

    @property
    def nodes(self) -> list[MariaDBServer]:
        """All servers, primary first."""
        return list(self._nodes)

    def __iter__(self) -> Iterator[MariaDBServer]:
        return iter(self.nodes)

    def multi_host_dsn(self, user: str = "root", password: str = "", database: str = "") -> str:
        """`mysql://user:pw@127.0.0.1:p1,127.0.0.1:p2/db`, primary first."""
        return mysql_url(user, password, [f"{n.host}:{n.port}" for n in self._nodes], database)

    # ---- SQL on the primary

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as root on the primary."""
        return self.primary.sql(query, params)

    def create_user(self, name: str, password: str, database: str) -> None:
        """Create the user and database on the primary and wait until replicas have them."""
        self.primary.create_user(name, password, database)
        self.wait_replicated()

    def wait_replicated(self, timeout: float | None = None) -> None:
        """Wait until every replica has applied everything the primary has binlogged."""
        gtid_pos = str(self.primary.get_global("gtid_binlog_pos"))
        for replica in self.replicas:
            replica.wait_for_gtid(gtid_pos, timeout=self.timeout if timeout is None else timeout)

    # ---- role changes

    def promote(self, new_primary: MariaDBServer) -> None:
        """Planned switchover: `new_primary` (a replica) becomes writable primary and every
        other node, the old primary included, a read-only replica of it."""
        if new_primary not in self.replicas:
            raise ValueError(f"{new_primary!r} is not a replica of this cluster")
        old_primary = self.primary
        # Stop client writes first so that nothing is lost between catch-up and switch.
        old_primary.set_read_only(True)
        self.wait_replicated()
        new_primary.stop_replicating()
        new_primary.set_read_only(False)
        others = [n for n in self._nodes if n is not new_primary]
        for node in others:
            # current_pos: the old primary's own writes are in its binlog, not its slave pos.
            node.replicate_from(
                new_primary,
                self.repl_user,
                self.repl_password,
                use_gtid="current_pos",
                timeout=self.timeout,
            )
        self._nodes = [new_primary, *others]
        self.wait_replicated()

    def switch_roles(self) -> None:
        """Promote the first replica (for a pair: primary and replica swap roles)."""
        if not self.replicas:
            raise ValueError("a cluster without replicas has no roles to switch")
        self.promote(self.replicas[0])

    # ---- cleanup

    def close(self) -> None:
        """Kill every node by its own pid and delete its directory. Idempotent."""
        errors: list[BaseException] = []
        for node in reversed(self._nodes):
            try:
                node.close()
            except Exception as exc:  # keep closing the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> MariaDBCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MariaDBReplicaPair(MariaDBCluster):
    """A primary and one read-only replica."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        super().__init__(replicas=1, timeout=timeout)

    @property
    def replica(self) -> MariaDBServer:
        return self._nodes[1]

    def __enter__(self) -> MariaDBReplicaPair:
        return self
