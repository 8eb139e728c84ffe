"""HAProxy in front of a Patroni cluster, the usual way: one port for the primary, one for
the replicas, each server checked through Patroni's REST API (`GET /primary`, `GET /replica`).

    with PatroniCluster(3, user="app", password="s3cret") as cluster:
        with HAProxy(cluster) as proxy:                   # fast checks (every 100 ms)
            proxy.dsn()            # postgresql://app:s3cret@127.0.0.1:PRIMARY,127.0.0.1:REPLICA/postgres
            proxy.primary_port, proxy.replica_port

`checks="recipe"` uses the checks most Patroni guides give (`inter 3s fall 3 rise 2`);
`checks="fast"` (the default) checks every 100 ms and needs one answer to change its mind,
with `timeout connect 200ms` and `option redispatch`. Both close the sessions of a server
marked down (`on-marked-down shutdown-sessions`), as the guides do.

Like the other servers of the test beds, HAProxy is our own child (foreground, `-db`),
stopped by its own pid, watched by this process's watchdog, with its configuration in a
scratch directory of its own.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._pg_setup import url
from qdbpool.testing._process import (
    LOOPBACK,
    ServerUnavailable,
    close_at_exit,
    find_binary,
    forget_at_exit,
    free_port,
    sweep_stale_dirs,
    wait_until,
)
from qdbpool.testing._watchdog import remove_scratch_dir, scratch_dir
from qdbpool.testing.patroni import PatroniCluster

__all__ = ["Checks", "HAProxy", "ServerUnavailable", "find_haproxy"]

Checks = Literal["fast", "recipe"]

DIR_PREFIX = "qdbpool-haproxy-"  # + creator pid + "-...", for the stale sweep

# How often each server is checked, and how many answers change HAProxy's mind.
_CHECKS = {
    "fast": "inter 100ms fastinter 100ms downinter 100ms fall 1 rise 1",
    "recipe": "inter 3s fall 3 rise 2",
}

_swept = False


def find_haproxy() -> str:
    """The path of the `haproxy` binary; raises ServerUnavailable if it is not installed."""
    try:
        return find_binary("haproxy", "/usr/sbin", "/usr/bin", "/usr/local/sbin")
    except ServerUnavailable as exc:
        raise ServerUnavailable(
            f"HAProxy is not installed ({exc}); install it, e.g. `apt-get install haproxy`"
        ) from None


class HAProxy:
    """HAProxy on 127.0.0.1 with a primary port and a replica port over `cluster`'s members.

    A context manager; `start()` / `close()` by hand work too.
    """

    host = LOOPBACK

    def __init__(
        self, cluster: PatroniCluster, *, checks: Checks = "fast", startup_timeout: float = 60.0
    ) -> None:
        if checks not in _CHECKS:
            raise ValueError(f"checks must be 'fast' or 'recipe', not {checks!r}")
        self.cluster = cluster
        self.checks = checks
        self.startup_timeout = startup_timeout
        self.binary = find_haproxy()
        self.primary_port = self.replica_port = 0
        self._dir: Path | None = None
        self._proc: ChildProcess | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid is not None else "down"
        return (
            f"<HAProxy {self.host} primary:{self.primary_port} replica:{self.replica_port} "
            f"checks={self.checks} {state}>"
        )

    @property
    def pid(self) -> int | None:
        """HAProxy's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.running() else None

    def log_tail(self, lines: int = 30) -> str:
        return self._proc.log_tail(lines) if self._proc is not None else ""

    # -- start and close -------------------------------------------------------------------

    def start(self) -> HAProxy:
        """Start HAProxy; return once the primary port reaches the leader and the replica
        port a replica."""
        if self._dir is not None:
            raise RuntimeError("an HAProxy can be started once")
        global _swept
        if not _swept:
            _swept = True
            sweep_stale_dirs(DIR_PREFIX)
        self._dir = scratch_dir(DIR_PREFIX)
        close_at_exit(self, self.close)
        try:
            self.primary_port = free_port(self.host)
            self.replica_port = free_port(self.host)
            config = self._dir / "haproxy.cfg"
            config.write_text(self._config())
            self._proc = ChildProcess(
                [self.binary, "-db", "-f", str(config)], log_path=self._dir / "haproxy.log"
            )
            self._await_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _config(self) -> str:
        check = _CHECKS[self.checks]
        lines = [
            "# Written by qdbpool.testing for a throwaway HAProxy.",
            "global",
            "    maxconn 500",
            "defaults",
            "    mode tcp",
            "    retries 2",
            "    timeout client 30m",
            "    timeout server 30m",
            # A connect to a dead server fails fast and, with redispatch, goes to another.
            f"    timeout connect {'200ms' if self.checks == 'fast' else '4s'}",
            "    timeout check 1s",
            *(["    option redispatch"] if self.checks == "fast" else []),
        ]
        for name, port, path in (
            ("primary", self.primary_port, "/primary"),
            ("replicas", self.replica_port, "/replica"),
        ):
            lines += [
                f"listen {name}",
                f"    bind {self.host}:{port}",
                "    balance roundrobin",
                "    option httpchk",
                f"    http-check send meth GET uri {path}",
                "    http-check expect status 200",
                f"    default-server {check} on-marked-down shutdown-sessions",
            ]
            lines += [
                f"    server {m.name} {m.host}:{m.port} check port {m.api_port}"
                for m in self.cluster.members
            ]
        return "\n".join(lines) + "\n"

    def _await_ready(self) -> None:
        proc = self._proc
        assert proc is not None

        # HAProxy takes every server for up until its checks say otherwise (with the
        # recipe's `fall 3`, some 9 s): ready once a round-robin pass over every member,
        # twice, lands on the right role through each port.
        tries = 2 * len(self.cluster.members)

        def ready() -> bool:
            if not proc.running():
                raise RuntimeError(f"HAProxy exited:\n{self.log_tail()}")
            if any(self.in_recovery(self.primary_port) is not False for _ in range(tries)):
                return False
            return len(self.cluster.members) == 1 or all(
                self.in_recovery(self.replica_port) is True for _ in range(tries)
            )

        try:
            wait_until(ready, timeout=self.startup_timeout, interval=0.02, what="HAProxy ready")
        except TimeoutError as exc:
            raise RuntimeError(f"HAProxy did not start: {exc}\n{self.log_tail()}") from None

    def in_recovery(self, port: int) -> bool | None:
        """What `pg_is_in_recovery()` says through `port`; None when nothing answers."""
        user, password = self.cluster.credentials(None, None)
        try:
            with psycopg.connect(
                url(user, password, [(self.host, port)], self.cluster.dbname, {}),
                connect_timeout=2,
                autocommit=True,
            ) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return None
        return bool(row[0]) if row is not None else None

    def close(self) -> None:
        """Stop HAProxy by its pid and remove its directory. Safe to call twice."""
        try:
            if self._proc is not None:
                self._proc.stop(timeout=10)
        finally:
            if self._dir is not None:
                remove_scratch_dir(self._dir)
                self._dir = None
            forget_at_exit(self)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connecting ------------------------------------------------------------------------

    def dsn(
        self, user: str | None = None, password: str | None = None, dbname: str | None = None
    ) -> str:
        """A two-host URL: the primary port, then the replica port (the cluster's user,
        password and database by default)."""
        user, password = self.cluster.credentials(user, password)
        hosts = [(self.host, self.primary_port), (self.host, self.replica_port)]
        return url(user, password, hosts, dbname or self.cluster.dbname, {})
