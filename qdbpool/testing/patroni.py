"""A real Patroni cluster (etcd + n Patroni members of PostgreSQL) on 127.0.0.1, for tests.

    with PatroniCluster(members=3, user="app", password="s3cret") as cluster:
        dsn = cluster.multi_host_dsn()          # every member's PostgreSQL, leader or not
        cluster.sql("CREATE TABLE t (x int)")   # on the leader
        new_leader = cluster.switchover()       # planned, through Patroni's REST API
        new_leader = cluster.failover()         # SIGKILL of the leader's postmaster
        Postgres(dsn, patroni=cluster.patroni_url())   # a factory that follows Patroni too
        old = new_leader; old.kill()            # node loss: Patroni and PostgreSQL at once
        old.start(); cluster.wait_healthy()     # it rejoins as a replica (pg_rewind)

Choices, and why:

* One etcd (v3 API, Patroni's `etcd3` section: Debian's etcd 3.4 serves no v2 API unless
  told to) and n Patroni members, each on free high ports of 127.0.0.1: PostgreSQL, the REST
  API, etcd's client and peer ports. Nothing listens on a default port.
* Patroni starts each postmaster through a helper that exits at once, so the postmaster is an
  orphan from birth. Each member therefore runs under a small supervisor of its own
  (`_subreaper.py`), a child subreaper that reaps what Patroni orphans; the test process
  starts, stops, watches and kills the supervisor by its pid, like any other server
  (`_child.py`, `_watchdog.py`). Killing its tree takes Patroni and PostgreSQL with it.
* Run as root, Patroni and PostgreSQL run as the OS user `postgres` (through `setpriv`).
* The leader does not run initdb: Patroni's custom bootstrap copies the test bed's initdb
  template (`_pg_setup.template`, fsync off, on tmpfs). Replicas are made by pg_basebackup.
* Timeouts are short (`ttl` 5 s, `loop_wait` 1 s, `retry_timeout` 2 s) and
  `primary_start_timeout` is 0 by default: a crashed leader's postmaster fails over rather
  than being restarted in place. `use_pg_rewind` lets an old leader rejoin as a replica.
* Authentication: Patroni and the test bed talk to PostgreSQL over a Unix socket in a
  directory only the server user (and root) can enter, with `trust`; the superuser
  `postgres` (replication, pg_rewind) has `trust` over loopback TCP. Other clients need the
  cluster's password when it has one.

A cluster taken through several crashes in a row now and then keeps a replica that stops
replaying at a timeline switch (its log repeats "record with incorrect prev-link" or
"invalid resource manager ID"), which Patroni 3.0.2 does not repair: give each scenario a
cluster of its own, or `reinitialize()` that member.

Not thread-safe: drive a cluster from one thread.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.abc import Params

from qdbpool.testing import _subreaper
from qdbpool.testing._child import ChildProcess
from qdbpool.testing._etcd import Etcd, find_etcd
from qdbpool.testing._pg_setup import (
    ADMIN_DB,
    ADMIN_USER,
    SERVER_OS_USER,
    find_postgres_bindir,
    new_scratch_dir,
    server_env,
    server_user_prefix,
    template,
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
    kill_tree,
    log_tail,
    process_alive,
    wait_until,
)
from qdbpool.testing._watchdog import remove_scratch_dir
from qdbpool.testing.postgres import sweep_stale_clusters

__all__ = ["PatroniCluster", "PatroniMember", "find_patroni"]

SqlText = str | pgsql.SQL | pgsql.Composed

_swept = False


def find_patroni() -> tuple[str, str, Path]:
    """The paths of `patroni` and `etcd` and PostgreSQL's bindir; ServerUnavailable if missing."""
    try:
        patroni = find_binary("patroni", "/usr/bin", "/usr/local/bin")
    except ServerUnavailable as exc:
        raise ServerUnavailable(f"{exc}; install it, e.g. `apt-get install patroni`") from None
    return patroni, find_etcd(), find_postgres_bindir()


class PatroniMember:
    """One Patroni member: its Patroni process (under a supervisor) and the PostgreSQL it runs."""

    host = LOOPBACK

    def __init__(self, cluster: PatroniCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.directory = cluster.root / name
        self.data_dir = self.directory / "data"
        self.config_path = self.directory / "patroni.yml"
        self.log_path = cluster.root / f"{name}.log"
        self.port = cluster.free_port()
        self.api_port = cluster.free_port()
        self._proc: ChildProcess | None = None

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self._proc is not None and self.running else "down"
        return f"<PatroniMember {self.name} {self.host}:{self.port} {state}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while this member's Patroni (its supervisor) runs."""
        return self._proc is not None and self._proc.running()

    @property
    def postmaster_pid(self) -> int | None:
        """The pid of this member's postmaster while it runs (from its postmaster.pid)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            # The file outlives a killed postmaster, and its pid may since name another
            # process: only a process started on this data directory counts.
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if str(self.data_dir).encode() not in argv:
            return None
        return pid if process_alive(pid) else None

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """Patroni's own view of this member (GET /patroni on its REST API)."""
        return self._api("GET", "/patroni", timeout=timeout)

    @property
    def role(self) -> str | None:
        """'leader', 'replica' or None (down or unknown), as Patroni says right now."""
        try:
            role = self.status().get("role")
        except (OSError, ValueError):
            return None
        return "leader" if role in ("master", "primary") else role

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
        """A libpq URL for this member's PostgreSQL over TCP (the cluster's user by default)."""
        user, password = self.cluster.credentials(user, password)
        return url(user, password, [(self.host, self.port)], dbname or self.cluster.dbname, params)

    def admin_connection(
        self, dbname: str | None = None, *, statement_timeout: float = 30.0
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit connection as the superuser over the Unix socket; close it."""
        return psycopg.connect(
            host=str(self.cluster.socket_dir),
            port=self.port,
            user=ADMIN_USER,
            dbname=dbname or self.cluster.dbname,
            autocommit=True,
            connect_timeout=5,
            options=f"-c statement_timeout={int(statement_timeout * 1000)}",
        )

    def sql(
        self,
        query: SqlText,
        params: Params | None = None,
        *,
        dbname: str | None = None,
        timeout: float = 30.0,
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over the Unix socket (autocommit); its rows."""
        with self.admin_connection(dbname, statement_timeout=timeout) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def streaming_from(self, leader: PatroniMember) -> bool:
        """True if this member's PostgreSQL is a replica streaming from `leader`, on the
        leader's timeline, through its replication slot, as both ends see it.

        Neither end alone is enough: a replica's receiver shows "streaming" as soon as it has
        connected, before the leader has accepted its slot and timeline; a former leader
        first streams the end of its old timeline; and the leader's pg_stat_replication
        also lists pg_basebackup under the member's name."""
        rows = self.sql(
            "SELECT status, sender_port, slot_name, receive_start_tli FROM pg_stat_wal_receiver",
            dbname=ADMIN_DB,
            timeout=5,
        )
        if not rows or rows[0] != ("streaming", leader.port, self.name, leader.timeline()):
            return False
        sending = leader.sql(
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r"
            " ON r.pid = s.active_pid WHERE s.slot_name = %s AND r.state = 'streaming'",
            [self.name],
            dbname=ADMIN_DB,
            timeout=5,
        )
        return bool(sending[0][0])

    def timeline(self) -> int:
        """The timeline this member's PostgreSQL writes (or, on a replica, replays) now."""
        rows = self.sql(
            "SELECT CASE WHEN pg_is_in_recovery()"
            " THEN (SELECT received_tli FROM pg_stat_wal_receiver)"
            " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
            " END",
            dbname=ADMIN_DB,
            timeout=5,
        )
        return int(rows[0][0] or 0)

    def is_in_recovery(self) -> bool:
        return bool(self.sql("SELECT pg_is_in_recovery()", dbname=ADMIN_DB)[0][0])

    # -- lifecycle -----------------------------------------------------------------------------

    def launch(self) -> None:
        """Start this member's Patroni (under its supervisor) without waiting for it."""
        if self.running:
            return
        argv = [
            sys.executable,
            "-I",  # the supervisor needs nothing but the standard library
            _subreaper.__file__,
            "--cwd",  # ours may be closed to the server user (a test's tmp_path, say)
            str(self.directory),
            *server_user_prefix(),
            self.cluster.patroni,
            str(self.config_path),
        ]
        env = server_env()
        env["HOME"] = str(self.directory)  # Patroni's and libpq's files stay in here
        self._proc = ChildProcess(argv, log_path=self.log_path, env=env)

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart) this member; return once it runs as the leader or a streaming
        replica. An old leader rejoins as a replica, rewound if it has to be."""
        self.launch()
        self.cluster.wait_healthy(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop this member cleanly: Patroni shuts PostgreSQL down and gives up its leader key
        (a planned loss). Killed, with PostgreSQL, after `timeout`."""
        if self._proc is None:
            return
        postmaster = self.postmaster_pid
        self._proc.stop(timeout=timeout)
        if postmaster is not None:
            self._proc.release_shared_memory(postmaster)

    def kill(self) -> None:
        """Node loss: SIGKILL Patroni and PostgreSQL at once (the leader key stays in etcd
        until its ttl runs out)."""
        if self._proc is None:
            return
        self._proc.kill()  # the whole tree, and the shared memory its postmaster left

    def kill_postmaster(self) -> int:
        """Crash this member's PostgreSQL (SIGKILL of the postmaster and its children); Patroni
        keeps running. Returns the postmaster's pid. On the leader with
        primary_start_timeout 0 that is a failover; otherwise Patroni restarts it in place."""
        pid = self.postmaster_pid
        if pid is None:
            raise RuntimeError(f"{self.name} has no running postmaster")
        kill_tree(pid)  # its supervisor reaps it and its children
        wait_until(
            lambda: not process_alive(pid),
            timeout=10,
            interval=0.005,
            what=f"postmaster {pid} gone",
        )
        return pid

    def reinitialize(self, timeout: float = 60.0) -> None:
        """Have Patroni throw this replica's data away and clone the leader afresh (POST
        /reinitialize); return once it streams again. The way out for a replica that cannot
        follow the leader any more, which a cluster taken through several crashes in a row
        can leave behind."""
        self._api("POST", "/reinitialize", {"force": True}, timeout=timeout)
        self.cluster.wait_healthy(timeout)

    # -- Patroni's REST API --------------------------------------------------------------------

    def _api(
        self, method: str, path: str, body: Mapping[str, object] | None = None, timeout: float = 1.0
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.host}:{self.api_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:  # Patroni answers 503 for "not the leader" etc.
            text = exc.read().decode()
            if method != "GET":
                raise RuntimeError(f"{method} {path} on {self.name}: {exc.code} {text}") from None
        try:
            parsed = json.loads(text)
        except ValueError:
            return {"message": text}
        return parsed if isinstance(parsed, dict) else {"message": parsed}

    # -- configuration -------------------------------------------------------------------------

    def write_config(self) -> None:
        cluster = self.cluster
        client_auth = "scram-sha-256" if cluster.password else "trust"
        config = {
            "scope": cluster.scope,
            "namespace": "/qdbpool/",
            "name": self.name,
            "log": {"level": "INFO"},
            "watchdog": {"mode": "off"},  # no /dev/watchdog here, and ttl is below its minimum
            "restapi": {
                "listen": f"{self.host}:{self.api_port}",
                "connect_address": f"{self.host}:{self.api_port}",
            },
            "etcd3": {"hosts": [f"{cluster.etcd.host}:{cluster.etcd.client_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": cluster.ttl,
                    "loop_wait": cluster.loop_wait,
                    "retry_timeout": cluster.retry_timeout,
                    "primary_start_timeout": cluster.primary_start_timeout,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        # pg_rewind needs both; the template turns full_page_writes off.
                        "parameters": {
                            "wal_log_hints": "on",
                            "full_page_writes": "on",
                            **cluster.settings,
                        },
                        # Should a rewind fail, clone the leader afresh rather than stay down.
                        "remove_data_directory_on_rewind_failure": True,
                        "remove_data_directory_on_diverged_timelines": True,
                    },
                },
                # No initdb: the leader's data directory is a copy of the test bed's template.
                "method": "qdbpool_copy",
                "qdbpool_copy": {
                    "command": f"cp -a {cluster.template_dir} {self.data_dir}",
                    "no_params": True,
                },
            },
            "postgresql": {
                "listen": f"{self.host}:{self.port}",
                "connect_address": f"{self.host}:{self.port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(cluster.bindir),
                "pgpass": str(self.directory / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": ADMIN_USER},
                    "replication": {"username": ADMIN_USER},
                    "rewind": {"username": ADMIN_USER},
                },
                "parameters": {
                    "unix_socket_directories": str(cluster.socket_dir),
                    "cluster_name": self.name,  # names the processes in ps output
                },
                "pg_hba": [
                    "local all all trust",
                    "local replication all trust",  # Patroni's own look at its timeline
                    f"host replication {ADMIN_USER} 127.0.0.1/32 trust",
                    f"host all {ADMIN_USER} 127.0.0.1/32 trust",
                    f"host all all 127.0.0.1/32 {client_auth}",
                ],
                "basebackup": [{"checkpoint": "fast"}, "no-sync"],
            },
        }
        self.directory.mkdir(mode=0o700, exist_ok=True)
        # JSON is YAML: no YAML writer needed.
        self.config_path.write_text(json.dumps(config, indent=2))


class PatroniCluster:
    """etcd and `members` Patroni members on 127.0.0.1; a context manager.

    `user`, `password` and `dbname` are what clients use (made as in PostgresCluster);
    `settings` are PostgreSQL parameters for every member (in Patroni's dynamic
    configuration); `ttl`, `loop_wait`, `retry_timeout` and `primary_start_timeout` are
    Patroni's own.
    """

    def __init__(
        self,
        members: int = 3,
        *,
        user: str = ADMIN_USER,
        password: str | None = None,
        dbname: str = "postgres",
        settings: Mapping[str, object] | None = None,
        ttl: int = 5,
        loop_wait: int = 1,
        retry_timeout: int = 2,
        primary_start_timeout: int = 0,
        startup_timeout: float = 60.0,
    ) -> None:
        if members < 1:
            raise ValueError("members must be >= 1")
        self.patroni, _, self.bindir = find_patroni()
        self.user = user
        self.password = password
        self.dbname = dbname
        self.settings = {k: _param(v) for k, v in (settings or {}).items()}
        self.ttl = ttl
        self.loop_wait = loop_wait
        self.retry_timeout = retry_timeout
        self.primary_start_timeout = primary_start_timeout
        self.startup_timeout = startup_timeout
        self._member_count = members
        self.members: list[PatroniMember] = []
        self._ports: set[int] = set()
        self._root: Path | None = None
        self._etcd: Etcd | None = None
        self._closed = False
        self.template_dir = Path()
        self.scope = f"qdbpool-{os.getpid()}-{id(self):x}"

    def __repr__(self) -> str:
        return f"<PatroniCluster {self.members!r}>"

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the cluster has not been started")
        return self._root

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def etcd(self) -> Etcd:
        if self._etcd is None:
            raise RuntimeError("the cluster has not been started")
        return self._etcd

    def free_port(self) -> int:
        """A free port of 127.0.0.1 that no other process of this cluster was given."""
        while True:
            port = free_port(LOOPBACK)
            if port not in self._ports:
                self._ports.add(port)
                return port

    def credentials(self, user: str | None, password: str | None) -> tuple[str, str | None]:
        """Default to the cluster's user; its password only goes with its own name."""
        user = user or self.user
        if password is None and user == self.user:
            password = self.password
        return user, password or None

    # -- start and close -----------------------------------------------------------------------

    def start(self) -> PatroniCluster:
        """Start etcd and every member; return once there is a leader and every other member
        streams from it. Cleans up on failure."""
        if self._root is not None:
            raise RuntimeError("a PatroniCluster can be started once")
        global _swept
        if not _swept:  # what a process that died with its watchdog left behind
            _swept = True  # (our directories share PostgresCluster's prefix, and its sweep)
            sweep_stale_clusters()
        close_at_exit(self, self.close)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.template_dir = template(self.bindir)
        self._root = new_scratch_dir("patroni-")
        os.chmod(self._root, 0o700)
        self.socket_dir.mkdir(mode=0o700)
        self._etcd = Etcd(self.root / "etcd", self.free_port)
        self._etcd.launch()
        self.members = [PatroniMember(self, f"member{i}") for i in range(self._member_count)]
        self._etcd.await_started(self.startup_timeout)
        for member in self.members:
            member.write_config()
        chown_to(self.root, SERVER_OS_USER)
        # All at once: one of them bootstraps the cluster (copies the template), the others
        # wait for it and clone it with pg_basebackup.
        for member in self.members:
            member.launch()
        self.wait_leader(self.startup_timeout)
        self._create_roles()
        self.wait_healthy(self.startup_timeout)

    def _create_roles(self) -> None:
        leader = self.leader
        user = pgsql.Identifier(self.user)
        if self.user != ADMIN_USER:
            leader.sql(
                pgsql.SQL("CREATE ROLE {} LOGIN CREATEDB IN ROLE pg_monitor").format(user),
                dbname=ADMIN_DB,
            )
        if self.password:
            leader.sql(
                pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(user, pgsql.Literal(self.password)),
                dbname=ADMIN_DB,
            )
        if self.dbname != "postgres":
            leader.sql(
                pgsql.SQL("CREATE DATABASE {} OWNER {}").format(
                    pgsql.Identifier(self.dbname), user
                ),
                dbname=ADMIN_DB,
            )
        elif self.user != ADMIN_USER:
            leader.sql(
                pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(user), dbname=ADMIN_DB
            )

    def close(self) -> None:
        """Kill every member and etcd by their own pids and remove the directory. Twice is fine."""
        if self._closed:
            return
        self._closed = True
        try:
            # The data is thrown away: no clean shutdown to wait for. Patroni goes first so
            # that it cannot restart a postmaster we kill.
            for member in self.members:
                member.kill()
            if self._etcd is not None:
                self._etcd.stop()
        finally:
            if self._root is not None:
                remove_scratch_dir(self._root)
            forget_at_exit(self)

    def __enter__(self) -> PatroniCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- topology ------------------------------------------------------------------------------

    def topology(self) -> dict[str, Any]:
        """Patroni's view of the cluster (GET /cluster), from the first member that answers."""
        last: Exception | None = None
        for member in self.members:
            if member.running:
                try:
                    return member._api("GET", "/cluster")
                except (OSError, ValueError) as exc:
                    last = exc
        raise RuntimeError(f"no Patroni member answers: {last!r}")

    def _leader_name(self) -> str | None:
        for entry in self.topology().get("members", []):
            if entry.get("role") in ("leader", "master", "primary") and entry.get("state") == (
                "running"
            ):
                return str(entry["name"])
        return None

    @property
    def leader(self) -> PatroniMember:
        """The member holding the leader key whose PostgreSQL runs as a primary."""
        name = self._leader_name()
        for member in self.members:
            if member.name == name:
                return member
        raise RuntimeError("the cluster has no leader right now")

    @property
    def replicas(self) -> list[PatroniMember]:
        leader = self._leader_name()
        return [m for m in self.members if m.running and m.name != leader]

    def member(self, name: str) -> PatroniMember:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    def wait_leader(
        self, timeout: float = 30.0, *, other_than: PatroniMember | None = None
    ) -> PatroniMember:
        """Wait until a member (other than `other_than`) leads and its PostgreSQL takes writes."""

        def writable_leader() -> PatroniMember | None:
            name = self._leader_name()
            if name is None or (other_than is not None and name == other_than.name):
                return None
            member = self.member(name)
            return None if member.is_in_recovery() else member

        return wait_until(writable_leader, timeout=timeout, interval=0.02, what="a leader")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until there is a leader and every running member streams from it."""
        deadline = time.monotonic() + timeout
        leader = self.wait_leader(timeout)

        seen: list[float] = []

        def all_streaming() -> bool:
            # Twice, 0.2 s apart: a receiver that has only just connected may yet be refused.
            if not all(
                m.streaming_from(leader) for m in self.members if m.running and m is not leader
            ):
                seen.clear()
                return False
            seen.append(time.monotonic())
            return seen[-1] - seen[0] >= 0.2

        try:
            wait_until(
                all_streaming,
                timeout=max(0.0, deadline - time.monotonic()),
                interval=0.02,
                what=f"replicas streaming from {leader.name}",
            )
        except TimeoutError as exc:
            logs = "\n".join(f"--- {m.name}:\n{m.log_tail(15)}" for m in self.members)
            raise TimeoutError(f"{exc}\n{logs}") from None

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has replayed everything committed on the leader."""
        leader = self.leader
        with leader.admin_connection(ADMIN_DB) as conn:
            conn.execute("SET synchronous_commit = on")
            conn.execute("SELECT pg_logical_emit_message(true, 'qdbpool.testing', 'barrier')")
            row = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
        assert row is not None
        target = row[0]
        for member in self.replicas:

            def caught_up(member: PatroniMember = member) -> bool:
                rows = member.sql(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [str(target)], dbname=ADMIN_DB
                )
                return bool(rows[0][0])

            wait_until(
                caught_up, timeout=timeout, interval=0.005, what=f"{member.name} at {target}"
            )

    # -- events --------------------------------------------------------------------------------

    def switchover(
        self, to: PatroniMember | None = None, *, timeout: float = 30.0
    ) -> PatroniMember:
        """A planned switchover through Patroni's REST API, to `to` or a replica Patroni picks;
        returns the new leader once it takes writes (the old one rejoins as a replica)."""
        old = self.leader
        body: dict[str, object] = {"leader": old.name}
        if to is not None:
            body["candidate"] = to.name
        old._api("POST", "/switchover", body, timeout=timeout)
        return self.wait_leader(timeout, other_than=old)

    def failover(self, *, timeout: float = 30.0) -> PatroniMember:
        """A crash of the leader's PostgreSQL (SIGKILL of its postmaster): with
        primary_start_timeout 0 (the default) Patroni promotes a replica. Returns it once it
        takes writes; the old leader's Patroni brings it back as a replica by itself."""
        if self.primary_start_timeout != 0:
            raise RuntimeError("failover() needs primary_start_timeout=0")
        old = self.leader
        old.kill_postmaster()
        return self.wait_leader(timeout, other_than=old)

    # -- URLs and SQL --------------------------------------------------------------------------

    def multi_host_dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        *,
        members: Sequence[PatroniMember] | None = None,
        **params: object,
    ) -> str:
        """postgresql://user:pw@127.0.0.1:p1,127.0.0.1:p2,.../dbname over `members` (all)."""
        user, password = self.credentials(user, password)
        chosen = members if members is not None else self.members
        hosts = [(m.host, m.port) for m in chosen]
        return url(user, password, hosts, dbname or self.dbname, params)

    def patroni_url(self) -> str:
        """What `Postgres(dsn, patroni=...)` follows: etcd's URL, then Patroni's namespace
        and this cluster's scope."""
        return f"{self.etcd.url}/qdbpool/{self.scope}"

    def sql(
        self, query: SqlText, params: Params | None = None, *, timeout: float = 30.0
    ) -> list[tuple[Any, ...]]:
        """Run one statement on the leader as the superuser (autocommit); its rows."""
        return self.leader.sql(query, params, timeout=timeout)


def _param(value: object) -> object:
    if isinstance(value, bool):
        return "on" if value else "off"
    return value
