"""The fault suite (`make soak`): qdbpool's promises under the faults users really meet.

Every scenario starts its own local servers (qdbpool.testing: PostgreSQL, and MariaDB for
fork-mariadb), drives them with
many threads through `@with_conn`, breaks something on purpose, and then checks a short list
of promises, each printed with its outcome. Scenarios, each run with a SingletonPool and a
BoundedPool where both make sense:

  failover  16 threads (writes via @with_conn(), reads via @with_conn(read_only=True)) on a
            3-node cluster whose primary is SIGKILLed and a standby promoted, again and
            again; the old primary is rebuilt as a standby after each failover.
  proxy     8 threads through a fault proxy that stalls, resets and refuses connections.
  fork      16 threads mid-query while the main thread and workers fork; children leave by
            os._exit, normal exit, pool.close(), one call of their own, or forking again.
  fork-mariadb  the same on MariaDB (PyMySQL), whose goodbye to a server differs from libpq's.
  race      8 threads calling while another re-initializes (and closes) the global pool.
  churn     short-lived threads, each making a few calls and ending.

Every loop is bounded in count and time; every server is stopped by its own pid when its
scenario ends, whatever happened. Exit status: 0 when every promise held, 1 when one broke.

Run: python -m bench.soak [--quick] [--seconds N] [--only fork,churn] [--pools singleton]
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pymysql

import qdbpool
from bench._harness import argument_parser
from qdbpool.factories.mysql import MySQL
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.availability import under_ci
from qdbpool.testing.mariadb import MariaDBServer
from qdbpool.testing.postgres import PostgresCluster, ServerUnavailable
from qdbpool.testing.proxy import FaultProxy

USER, PASSWORD, DATABASE = "soak", "soak-secret", "soak"  # DATABASE: MariaDB's
APP = "qdbpool-soak"  # application_name of the pools' sessions: how the servers count them
TABLE = "soak_writes"
READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction: a write sent to a standby

ERROR_PAUSE = 0.01  # a worker waits this long after a failed call (keeps a dead host calm)
JOIN_TIMEOUT = 15.0  # a worker not finished this long after being told to stop is hung
SESSIONS_TIMEOUT = 5.0  # for the servers to see the sessions a pool closed go away
RECOVERY_LIMIT = 10.0  # writes must resume this soon after a failover, calls after a fault
CHILD_TIMEOUT = 5.0  # a forked child must have exited by then; it is killed otherwise
MAX_CALLS_PER_THREAD = 1_000_000  # a bound on every worker loop, beyond its deadline

POOL_KINDS = ("singleton", "bounded")
SCENARIOS = ("failover", "proxy", "fork", "fork-mariadb", "race", "churn")


# --------------------------------------------------------------------------------------------
# What a scenario measures and promises
# --------------------------------------------------------------------------------------------


def error_name(exc: BaseException) -> str:
    """`psycopg.OperationalError`, `qdbpool.PoolClosedError`, `builtins.AttributeError` ..."""
    return f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}"


def documented_error(exc: BaseException) -> bool:
    """An error a caller may meet: the driver's, or one of qdbpool's own."""
    return isinstance(exc, (psycopg.Error, pymysql.Error, qdbpool.QdbPoolError))


class Tally:
    """Thread-safe counters of the calls of one scenario run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, str] = {}  # one message per error type, for the report
        self.undocumented = 0
        self.wrong_role_writes = 0
        self.read_only_errors = 0
        self.longest = 0.0

    def ok(self, seconds: float) -> None:
        with self._lock:
            self.calls += 1
            self.longest = max(self.longest, seconds)

    def failed(self, seconds: float, exc: BaseException) -> None:
        name = error_name(exc)
        with self._lock:
            self.calls += 1
            self.longest = max(self.longest, seconds)
            self.errors[name] += 1
            self.samples.setdefault(
                name, str(exc).strip().splitlines()[0][:160] if str(exc) else ""
            )
            if not documented_error(exc):
                self.undocumented += 1
            if getattr(exc, "sqlstate", None) == READ_ONLY_SQLSTATE:
                self.read_only_errors += 1

    def wrong_role(self) -> None:
        with self._lock:
            self.wrong_role_writes += 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class Promise:
    text: str
    held: bool
    detail: str


@dataclass
class Result:
    scenario: str
    pool: str
    setup: str
    tally: Tally
    sessions_left: int | None = None
    figures: dict[str, str] = field(default_factory=dict)
    promises: list[Promise] = field(default_factory=list)

    def promise(self, text: str, held: bool, detail: str) -> None:
        self.promises.append(Promise(text, held, detail))

    @property
    def broken(self) -> list[Promise]:
        return [p for p in self.promises if not p.held]


class LogCounter(logging.Handler):
    """Counts qdbpool's log records of WARNING and above instead of printing each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1

    def take(self) -> str:
        text = ", ".join(f"{n} {level}" for level, n in sorted(self.counts.items())) or "none"
        self.counts.clear()
        return text


LOG_COUNTER = LogCounter()


# --------------------------------------------------------------------------------------------
# Servers, pools and the calls the workers make
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """Start `cluster`; stop it (each server by its own pid) when the block ends, in the
    process that started it only: a forked child unwinding through here leaves it alone."""
    owner = os.getpid()
    try:
        cluster.start()
        yield cluster
    finally:
        if os.getpid() == owner:
            cluster.close()


def new_cluster(standbys: int) -> PostgresCluster:
    return PostgresCluster(standbys=standbys, user=USER, password=PASSWORD)


def create_table(cluster: PostgresCluster) -> None:
    cluster.primary.sql(f"CREATE TABLE {TABLE} (thread int, seq int)")
    cluster.primary.sql(f"GRANT SELECT, INSERT ON {TABLE} TO {USER}")
    cluster.wait_replicated()


def make_pool(
    kind: str, factory: Postgres | MySQL, *, size: int = 8, **options: Any
) -> qdbpool.Pool:
    if kind == "singleton":
        return qdbpool.SingletonPool(factory, **options)
    return qdbpool.BoundedPool(factory, size=size, timeout=10.0, **options)


def pool_label(kind: str) -> str:
    labels = {"singleton": "SingletonPool", "bounded": "BoundedPool(size=8)"}
    return labels.get(kind, "both pools")


def server_sessions(cluster: PostgresCluster) -> dict[int, str]:
    """Backend pid -> node name of every pool session (our application_name) on every
    running node. Asked over TCP as the cluster's user (a pg_monitor member, so it sees
    every session), which works even if a child removed the servers' socket directory."""
    found: dict[int, str] = {}
    for node in cluster.nodes:
        if node.running:
            with psycopg.connect(
                node.dsn(), autocommit=True, connect_timeout=5, application_name=APP + "-counter"
            ) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APP]
                ).fetchall()
            found.update((row[0], node.name) for row in rows)
    return found


def servers_intact(cluster: PostgresCluster) -> bool:
    """Every server still runs and its directory is still there."""
    return cluster.root.is_dir() and all(node.running for node in cluster.nodes)


class PgServers:
    """What the suite asks of a PostgresCluster: its pool sessions, whether it is intact."""

    label = "PostgreSQL"
    # A call that says which session answered, and stays mid-query for a moment.
    session_query = "SELECT pg_backend_pid(), pg_sleep(0.002)"

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster

    def factory(self) -> Postgres:
        return Postgres(self.cluster.primary.dsn(), application_name=APP)

    def sessions(self) -> frozenset[int]:
        return frozenset(server_sessions(self.cluster))

    def intact(self) -> bool:
        return servers_intact(self.cluster)


class MariaDBServers:
    """The same of one MariaDB server, whose pool sessions are those of the user USER."""

    label = "MariaDB"
    session_query = "SELECT CONNECTION_ID(), SLEEP(0.002)"

    def __init__(self, server: MariaDBServer) -> None:
        self.server = server

    def factory(self) -> MySQL:
        return MySQL(self.server.dsn(USER, PASSWORD, DATABASE))

    def sessions(self) -> frozenset[int]:
        rows = self.server.sql(
            "SELECT id FROM information_schema.PROCESSLIST WHERE user = %s", [USER]
        )
        return frozenset(int(row[0]) for row in rows)

    def intact(self) -> bool:
        return self.server.running and self.server.base_dir.is_dir()


Servers = PgServers | MariaDBServers


@contextlib.contextmanager
def fork_servers(database: str) -> Iterator[Servers]:
    """A single server of `database` ("postgresql" or "mariadb"), stopped by its own pid
    at the end of the block, in the process that started it only."""
    if database == "postgresql":
        with servers(new_cluster(standbys=0)) as cluster:
            yield PgServers(cluster)
        return
    owner = os.getpid()
    server = MariaDBServer()
    try:
        server.create_user(USER, PASSWORD, DATABASE)
        yield MariaDBServers(server)
    finally:
        if os.getpid() == owner:
            server.close()


class SessionPeak:
    """Samples the servers' pool sessions every 50 ms in a thread of its own; the peak tells
    whether a pool ever had more sessions open than it may.

    One sweep asks the nodes in turn, so it is not one moment: a connection closed on the
    first node after it answered and its replacement opened on the last one before it
    answered would both be counted (a BoundedPool trading connections between routes does
    that all the time). A session seen in two consecutive sweeps was open from its node's
    first answer to its node's second, and every such interval contains the time between
    the two sweeps: those sessions were all open at one moment. Only they are counted."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sessions", daemon=True)

    def start(self) -> SessionPeak:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT)

    def _run(self) -> None:
        previous: frozenset[int] = frozenset()
        for _ in range(100_000):
            with contextlib.suppress(psycopg.Error):  # a node killed while we ask it
                current = self.servers.sessions()
                self.peak = max(self.peak, len(current & previous))
                previous = current
            if self._stop.wait(0.05):
                return


def peak_promise(result: Result, peak: int) -> None:
    result.figures["most server-side sessions at once (in two sweeps 50 ms apart)"] = str(peak)
    if result.pool == "bounded":
        result.promise(
            "a BoundedPool never has more than max_size (8) sessions on the servers",
            peak <= 8,
            f"peak {peak}",
        )


def settle_sessions(servers: Servers, want: Callable[[int], bool]) -> int:
    """The servers' count of pool sessions once `want(count)` holds, or after
    SESSIONS_TIMEOUT (a closed session's backend takes a moment to exit)."""
    deadline = time.monotonic() + SESSIONS_TIMEOUT
    while True:
        count = len(servers.sessions())
        if want(count) or time.monotonic() >= deadline:
            return count
        time.sleep(0.02)  # polling interval


def close_global_pool(servers: Servers, result: Result | None = None) -> int:
    """Close the global pool; the pool sessions the servers still see afterwards. With a
    `result`, note first what the pool's counters say about its connections."""
    if result is not None:
        stats = qdbpool.instance().stats()
        result.figures["pool: opened / closed / discarded / checkouts / connect errors"] = (
            f"{stats.created} / {stats.closed} / {stats.discarded} / {stats.checkouts} / "
            f"{stats.connect_errors} ({stats.created / max(stats.checkouts, 1):.4f} opened "
            "per checkout)"
        )
    qdbpool.close()
    return settle_sessions(servers, lambda n: n == 0)


@qdbpool.with_conn()
def write_row(conn: Any, tally: Tally, thread: int, seq: int) -> bool:
    """One write; a server in recovery answering it counts as a wrong-role write."""
    in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    if in_recovery:
        conn.rollback()
        tally.wrong_role()
        return False
    conn.execute(f"INSERT INTO {TABLE} (thread, seq) VALUES (%s, %s)", (thread, seq))
    conn.commit()
    return True


@qdbpool.with_conn(read_only=True)
def read_rows(conn: Any) -> None:
    conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    conn.rollback()


@qdbpool.with_conn()
def backend_pid(conn: Any, sleep: float = 0.0) -> int:
    pid = conn.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (sleep,)).fetchone()[0]
    conn.rollback()
    return int(pid)


@qdbpool.with_conn()
def session_id(conn: Any, query: str) -> int:
    """The id of the server session that answers `query` (its first column), through the
    DB-API alone, so that it works on every driver."""
    cursor = conn.cursor()
    try:
        cursor.execute(query)
        row = cursor.fetchone()
    finally:
        cursor.close()
    conn.rollback()
    return int(row[0])


@qdbpool.with_conn(read_only=True)
def backend_pid_read_only(conn: Any) -> int:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.rollback()
    return int(pid)


class Load:
    """`threads` workers each calling `op(thread, seq)` until stopped, at most
    MAX_CALLS_PER_THREAD times. `op` returns True for a successful write (which the
    failover scenario watches for)."""

    def __init__(
        self,
        name: str,
        threads: int,
        op: Callable[[int, int], object],
        tally: Tally,
        *,
        after: Callable[[int, int], None] | None = None,
    ) -> None:
        self.op = op
        self.after = after  # run after each successful call, outside its timing
        self.tally = tally
        self.stop = threading.Event()
        self.last_ok_start = [0.0] * threads  # per thread: start of its last successful call
        self.last_write_start = 0.0  # start of the last successful write, any thread
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"soak-{name}-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, index: int) -> None:
        for seq in range(MAX_CALLS_PER_THREAD):
            if self.stop.is_set():
                return
            started = time.monotonic()
            try:
                wrote = self.op(index, seq)
            except Exception as exc:
                self.tally.failed(time.monotonic() - started, exc)
                self.stop.wait(ERROR_PAUSE)
                continue
            self.tally.ok(time.monotonic() - started)
            self.last_ok_start[index] = started
            if wrote is True:
                self.last_write_start = max(self.last_write_start, started)
            if self.after is not None:
                self.after(index, seq)

    def all_ok_since(self, moment: float) -> bool:
        """Every thread has made a successful call that started after `moment`."""
        return min(self.last_ok_start) > moment

    def wrote_since(self, moment: float) -> bool:
        """A successful write started after `moment`."""
        return self.last_write_start > moment

    def wait(self, done: Callable[[], bool], timeout: float) -> float | None:
        """Seconds until `done()` holds (polled), or None after `timeout`."""
        start = time.monotonic()
        while not done():
            if time.monotonic() - start >= timeout:
                return None
            time.sleep(0.005)  # polling interval
        return time.monotonic() - start

    def finish(self) -> int:
        """Stop the workers; the number that did not end within JOIN_TIMEOUT (hung)."""
        self.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in self.threads)


def common_promises(result: Result, hung: int, longest_limit: float) -> None:
    tally = result.tally
    result.promise(
        "errors are the driver's or qdbpool's own (no internal error leaks)",
        tally.undocumented == 0,
        f"{tally.undocumented} other",
    )
    result.promise(
        f"no call takes longer than {longest_limit:g} s (no hang)",
        tally.longest <= longest_limit,
        f"longest {tally.longest:.3f} s",
    )
    result.promise(
        f"every worker thread ends within {JOIN_TIMEOUT:g} s of being told to stop",
        hung == 0,
        f"{hung} hung",
    )
    if result.sessions_left is not None:
        result.promise(
            "no server-side session is left after close()",
            result.sessions_left == 0,
            f"{result.sessions_left} left",
        )


# --------------------------------------------------------------------------------------------
# failover: 16 threads through repeated failovers of a 3-node cluster
# --------------------------------------------------------------------------------------------


def scenario_failover(result: Result, seconds: float) -> None:
    kind, tally = result.pool, result.tally
    outages: list[float | None] = []
    with servers(new_cluster(standbys=2)) as cluster:
        create_table(cluster)
        factory = Postgres(cluster.multi_host_dsn(), application_name=APP)
        qdbpool.initialize(make_pool(kind, factory))

        def op(thread: int, seq: int) -> object:
            if seq % 2:
                read_rows()
                return None
            return write_row(tally, thread, seq)

        load = Load("failover", 16, op, tally).start()
        hung = 0
        sampler = SessionPeak(PgServers(cluster)).start()
        try:
            load.wait(lambda: load.all_ok_since(0.0), 30.0)
            end = time.monotonic() + seconds
            # A failover, its recovery and the rebuild of the old primary take 2-4 s here.
            interval = max(1.0, min(8.0, seconds / 5))
            for _ in range(100):
                if end - time.monotonic() < interval:
                    break
                load.stop.wait(interval)  # traffic between two failovers
                old = cluster.primary
                killed = time.monotonic()
                cluster.failover(timeout=20.0)
                outage = load.wait(functools.partial(load.wrote_since, killed), RECOVERY_LIMIT)
                outages.append(None if outage is None else time.monotonic() - killed)
                cluster.rebuild_standby(old, timeout=30.0)
            load.stop.wait(max(0.0, end - time.monotonic()))  # the rest of the time: traffic
        finally:
            hung = load.finish()
            sampler.stop()
            result.sessions_left = close_global_pool(PgServers(cluster), result)
    result.setup = f"16 threads, 3-node cluster, {len(outages)} failovers in {seconds:g} s"
    shown = " ".join("none" if o is None else f"{o:.2f}" for o in outages)
    result.figures["write outage per failover (s)"] = shown or "-"
    result.promise(
        "no write is answered by a server in recovery",
        tally.wrong_role_writes == 0 and tally.read_only_errors == 0,
        f"{tally.wrong_role_writes} wrong-role, {tally.read_only_errors} x SQLSTATE 25006",
    )
    peak_promise(result, sampler.peak)
    result.promise(
        f"writes resume within {RECOVERY_LIMIT:g} s of every failover",
        bool(outages) and all(o is not None for o in outages),
        f"{sum(o is None for o in outages)} of {len(outages)} did not",
    )
    common_promises(result, hung, longest_limit=20.0)


# --------------------------------------------------------------------------------------------
# proxy: stalls, resets and refusals between the pool and its server
# --------------------------------------------------------------------------------------------

FAULT_SECONDS = 1.0  # how long a stall or a refusal lasts
CONNECT_TIMEOUT = 2  # libpq connect_timeout through the proxy: a stalled connect gives up


def scenario_proxy(result: Result, seconds: float) -> None:
    kind, tally = result.pool, result.tally
    heals: list[tuple[str, float | None]] = []
    with (
        servers(new_cluster(standbys=0)) as cluster,
        FaultProxy(cluster.primary.host, cluster.primary.port) as proxy,
    ):
        dsn = f"postgresql://{USER}:{PASSWORD}@{proxy.host}:{proxy.port}/postgres"
        factory = Postgres(dsn, application_name=APP, connect_timeout=CONNECT_TIMEOUT)
        options = {"pre_ping": True} if kind == "bounded" else {}
        qdbpool.initialize(make_pool(kind, factory, **options))
        load = Load("proxy", 8, lambda _t, _s: backend_pid(0.001), tally).start()
        faults: list[tuple[str, Callable[[], None]]] = [
            ("stall", proxy.stall),
            ("reset", proxy.reset),
            ("refuse", proxy.refuse),
        ]
        hung = 0
        try:
            load.wait(lambda: load.all_ok_since(0.0), 30.0)
            end = time.monotonic() + seconds
            for round_ in range(300):
                if end - time.monotonic() < FAULT_SECONDS + 0.5:
                    break
                load.stop.wait(min(1.0, seconds / 12))  # healthy traffic between two faults
                name, fault = faults[round_ % len(faults)]
                fault()
                if name != "reset":  # a reset is over at once; the others last a while
                    load.stop.wait(FAULT_SECONDS)
                    proxy.pass_through()
                healed = time.monotonic()
                heals.append(
                    (name, load.wait(functools.partial(load.all_ok_since, healed), RECOVERY_LIMIT))
                )
        finally:
            hung = load.finish()
            proxy.pass_through()
            result.sessions_left = close_global_pool(PgServers(cluster), result)
            result.figures["connections accepted by the proxy"] = str(proxy.accepted)
    result.setup = (
        f"8 threads, 1 server behind a fault proxy, {len(heals)} faults "
        f"(stall/reset/refuse, {FAULT_SECONDS:g} s each) in {seconds:g} s"
        + (", pre_ping=True" if kind == "bounded" else "")
    )
    worst = max((h for _, h in heals if h is not None), default=0.0)
    result.figures["all threads served again after a fault, worst (s)"] = f"{worst:.3f}"
    failed = [name for name, h in heals if h is None]
    result.promise(
        f"every thread is served again within {RECOVERY_LIMIT:g} s after each fault heals",
        bool(heals) and not failed,
        f"not after: {', '.join(failed)}" if failed else f"{len(heals)} faults",
    )
    common_promises(result, hung, longest_limit=FAULT_SECONDS + CONNECT_TIMEOUT + 10.0)


# --------------------------------------------------------------------------------------------
# fork: the main thread and workers fork while 16 threads are mid-query
# --------------------------------------------------------------------------------------------

# How a child leaves. "exit" (a normal interpreter exit: atexit, finalizers) only for forks
# of the main thread: a child forked by a worker has no interpreter stack to unwind.
MAIN_EXITS = ("os._exit", "close", "call", "fork", "exit")
WORKER_EXITS = ("os._exit", "close", "call", "fork")
FORKING_WORKERS = 4  # workers 0..3 fork now and then; the main thread forks too


class ChildExit(SystemExit):
    """Raised in a forked child to leave the way a program normally ends."""


def reap(pid: int, timeout: float = CHILD_TIMEOUT) -> int | None:
    """The exit code of child `pid`; None if it was still running after `timeout` (then
    it is killed by its pid and reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)  # polling interval
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def child_leaves(how: str, parent_pids: frozenset[int], query: str) -> None:
    """In a forked child: leave as `how` says. Never returns (ChildExit for "exit")."""
    code = 0
    try:
        if how == "exit":
            raise ChildExit(0)
        if how == "close":
            qdbpool.close()
        elif how == "call":  # the child's own session, never one of the parent's
            # Where a child hangs, its stack on stderr says why (the parent kills it later).
            faulthandler.dump_traceback_later(CHILD_TIMEOUT - 1.0, exit=False)
            code = 3 if session_id(query) in parent_pids else 0
        elif how == "fork":
            sys.stdout.flush()
            grandchild = os.fork()
            if grandchild == 0:
                os._exit(0)
            code = 0 if reap(grandchild) == 0 else 5
    except ChildExit:
        raise
    except BaseException:
        code = 4
    os._exit(code)


class Forks:
    """Forks of the main thread and of workers, and what became of the children."""

    def __init__(self, limit: int, session_query: str) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.session_query = session_query  # what a child's own call asks
        self.started = 0
        self.outcomes: Counter[str] = Counter()  # how -> children that exited 0
        self.bad: Counter[str] = Counter()  # "how: exit N" / "how: hung (killed)"
        self.parent_pids: frozenset[int] = frozenset()
        self.stopped = False  # no more forks: the servers are gone, the rest would be noise

    def claim(self) -> bool:
        with self._lock:
            if self.stopped or self.started >= self.limit:
                return False
            self.started += 1
            return True

    def fork(self, how: str) -> None:
        sys.stdout.flush()  # else a child's normal exit would print our buffered output again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child_leaves(how, self.parent_pids, self.session_query)
        code = reap(pid)
        with self._lock:
            if code == 0:
                self.outcomes[how] += 1
            else:
                self.bad[f"{how}: {'hung, killed' if code is None else f'exit {code}'}"] += 1

    @property
    def hung(self) -> int:
        return sum(n for key, n in self.bad.items() if key.endswith("killed"))


def scenario_fork(
    result: Result,
    seconds: float,
    fork_limit: int,
    exits: Sequence[str] = MAIN_EXITS,
    database: str = "postgresql",
) -> None:
    kind, tally = result.pool, result.tally
    main_exits = [e for e in MAIN_EXITS if e in exits]
    worker_exits = [e for e in WORKER_EXITS if e in exits] or main_exits
    me = os.getpid()
    seen: set[int] = set()
    seen_lock = threading.Lock()
    servers_lost = False
    after: frozenset[int] = frozenset()
    with fork_servers(database) as server:
        forks = Forks(fork_limit, server.session_query)
        options = {"pre_create": 8} if kind == "bounded" else {}
        qdbpool.initialize(make_pool(kind, server.factory(), **options))
        warm = threading.Event()

        def op(_thread: int, _seq: int) -> object:
            pid = session_id(server.session_query)  # mid-query most of the time
            if warm.is_set():
                with seen_lock:
                    seen.add(pid)
            return None

        def maybe_fork(thread: int, seq: int) -> None:
            if thread < FORKING_WORKERS and seq % 25 == 24 and warm.is_set() and forks.claim():
                forks.fork(worker_exits[(seq // 25 + thread) % len(worker_exits)])

        load = Load("fork", 16, op, tally, after=maybe_fork).start()
        stop_stats = threading.Event()

        def read_stats() -> None:  # the issue saw children hang in fork() with this running
            for _ in range(10_000_000):
                if stop_stats.is_set():
                    return
                qdbpool.instance().stats()
                time.sleep(0)

        stats_thread = threading.Thread(target=read_stats, name="soak-stats", daemon=True)
        stats_thread.start()
        hung = 0
        try:
            load.wait(lambda: load.all_ok_since(0.0), 30.0)
            want = 16 if kind == "singleton" else 8
            settle_sessions(server, lambda n: n >= want)
            forks.parent_pids = server.sessions()
            warm.set()
            end = time.monotonic() + seconds
            # Children that exit normally come last (the final fifth of the forks), every
            # other fork: if one breaks everything, the forks before it have told their story.
            others = [e for e in main_exits if e != "exit"] or ["exit"]
            normal_exits_from = fork_limit * 4 // 5 if "exit" in main_exits else fork_limit
            for n in range(fork_limit):
                if time.monotonic() >= end - seconds / 5:
                    normal_exits_from = 0
                if time.monotonic() >= end or not forks.claim():
                    break
                late = forks.started > normal_exits_from and n % 2 == 0
                forks.fork("exit" if late else others[n % len(others)])
                if not server.intact():  # a child stopped the parent's servers
                    servers_lost = forks.stopped = True
                    break
                time.sleep(0.01)  # let the workers run a few calls between two forks
            # Workers fork too; give them until the deadline to use up their share.
            load.wait(
                lambda: forks.started >= fork_limit or forks.stopped,
                max(0.0, end - time.monotonic()),
            )
        finally:
            if os.getpid() == me:  # a child leaving by a normal exit unwinds through here
                stop_stats.set()
                hung = load.finish()
                stats_thread.join(JOIN_TIMEOUT)
                servers_lost = servers_lost or not server.intact()
                try:
                    after = server.sessions()
                    result.sessions_left = close_global_pool(server, result)
                except (psycopg.Error, pymysql.Error):  # a child took the parent's server away
                    qdbpool.close()
    replaced = len(seen - forks.parent_pids)
    result.setup = (
        f"{server.label}, 16 threads mid-query + 1 reading stats(), {forks.started} forks "
        f"(main thread: {'/'.join(main_exits)}; {FORKING_WORKERS} workers: "
        f"{'/'.join(worker_exits)}) in {seconds:g} s"
    )
    result.figures["children exited 0, by how they left"] = (
        ", ".join(f"{how} {n}" for how, n in sorted(forks.outcomes.items())) or "none"
    )
    result.figures["children that failed"] = (
        ", ".join(f"{key} x{n}" for key, n in sorted(forks.bad.items())) or "none"
    )
    result.figures["parent sessions at warm-up / still there after the forks"] = (
        f"{len(forks.parent_pids)} / {len(forks.parent_pids & after)}"
    )
    result.promise(
        "the parent's calls see 0 errors",
        tally.error_count == 0,
        f"{tally.error_count} errors",
    )
    result.promise(
        "0 parent sessions replaced (backend pids seen by the workers after warm-up)",
        replaced == 0,
        f"{replaced} new backend pids",
    )
    result.promise(
        f"every child exits by itself within {CHILD_TIMEOUT:g} s, status 0",
        not forks.bad,
        f"{sum(forks.bad.values())} of {forks.started} did not",
    )
    result.promise(
        "a child's exit leaves the parent's servers running, their directories in place",
        not servers_lost,
        "stopped or removed by a child" if servers_lost else "intact",
    )
    common_promises(result, hung, longest_limit=10.0)


# --------------------------------------------------------------------------------------------
# race: calls while another thread re-initializes and closes the global pool
# --------------------------------------------------------------------------------------------

RACE_ERRORS = ("qdbpool.PoolClosedError", "qdbpool.PoolNotInitializedError")  # see error_name


def scenario_race(result: Result, seconds: float) -> None:
    tally = result.tally
    reinits = closes = reused = 0
    slowest = 0.0
    with servers(new_cluster(standbys=1)) as cluster:
        dsn = cluster.multi_host_dsn()

        def op(_thread: int, seq: int) -> object:
            return backend_pid_read_only() if seq % 2 else backend_pid()

        load = Load("race", 8, op, tally).start()
        hung = 0
        factory: Postgres | None = None
        try:
            end = time.monotonic() + seconds
            for n in range(2000):
                if time.monotonic() >= end:
                    break
                kind = POOL_KINDS[n % 2]
                # Every third pool reuses the factory of the pool it replaces (closed with it).
                if factory is None or n % 3 != 2:
                    factory = Postgres(dsn, application_name=APP)
                else:
                    reused += 1
                started = time.monotonic()
                qdbpool.initialize(make_pool(kind, factory))
                reinits += 1
                load.stop.wait(0.05)  # calls on the new pool
                if n % 4 == 3:
                    qdbpool.close()
                    closes += 1
                    load.stop.wait(0.02)  # calls on the closed pool
                slowest = max(slowest, time.monotonic() - started)
        finally:
            hung = load.finish()
            result.sessions_left = close_global_pool(PgServers(cluster))
    result.setup = (
        f"8 threads (reads and writes), 2-node cluster, {reinits} initialize() alternating "
        f"SingletonPool/BoundedPool ({reused} reusing the previous factory), {closes} close() "
        f"in {seconds:g} s"
    )
    result.figures["slowest initialize() + close() (s)"] = f"{slowest:.3f}"
    wrong = {name: n for name, n in tally.errors.items() if name not in RACE_ERRORS}
    result.promise(
        "callers see only PoolClosedError / PoolNotInitializedError",
        not wrong,
        ", ".join(f"{name} x{n}" for name, n in sorted(wrong.items())) or "none other",
    )
    common_promises(result, hung, longest_limit=10.0)


# --------------------------------------------------------------------------------------------
# churn: short-lived threads
# --------------------------------------------------------------------------------------------

CHURN_CALLS = 5  # calls of each short-lived thread
CHURN_ALIVE = 8  # short-lived threads running at once


def scenario_churn(result: Result, seconds: float) -> None:
    kind, tally = result.pool, result.tally
    started = hung = 0
    with servers(new_cluster(standbys=1)) as cluster:
        factory = Postgres(cluster.multi_host_dsn(), application_name=APP)
        pool = make_pool(kind, factory)
        qdbpool.initialize(pool)

        def short_life() -> None:
            for seq in range(CHURN_CALLS):
                began = time.monotonic()
                try:
                    _ = backend_pid_read_only() if seq % 2 else backend_pid()
                except Exception as exc:
                    tally.failed(time.monotonic() - began, exc)
                else:
                    tally.ok(time.monotonic() - began)

        alive: list[threading.Thread] = []
        end = time.monotonic() + seconds
        sampler = SessionPeak(PgServers(cluster)).start()
        try:
            for n in range(100_000):
                if time.monotonic() >= end:
                    break
                if len(alive) >= CHURN_ALIVE:
                    oldest = alive.pop(0)
                    oldest.join(JOIN_TIMEOUT)
                    hung += oldest.is_alive()
                thread = threading.Thread(target=short_life, name=f"soak-churn-{n}", daemon=True)
                thread.start()
                alive.append(thread)
                started += 1
        finally:
            for thread in alive:
                thread.join(JOIN_TIMEOUT)
                hung += thread.is_alive()
            sampler.stop()
            open_now = pool.stats().open
            sessions = settle_sessions(PgServers(cluster), lambda n: n == pool.stats().open)
            open_after = pool.stats().open
            result.sessions_left = close_global_pool(PgServers(cluster), result)
    result.setup = (
        f"{started} threads of {CHURN_CALLS} calls each (reads and writes), "
        f"{CHURN_ALIVE} at a time, 2-node cluster, in {seconds:g} s"
    )
    result.figures["after the last thread ended: server sessions / stats().open"] = (
        f"{sessions} / {open_after} (open {open_now} at once)"
    )
    peak_promise(result, sampler.peak)
    result.promise(
        "after the threads end, the servers' sessions == stats().open",
        sessions == open_after,
        f"{sessions} vs {open_after}",
    )
    if kind == "singleton":
        result.promise(
            "a SingletonPool closes each thread's connections when the thread ends",
            open_after == 0,
            f"{open_after} open",
        )
    result.promise("calls see 0 errors", tally.error_count == 0, f"{tally.error_count} errors")
    common_promises(result, hung, longest_limit=10.0)


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def report(result: Result, elapsed: float) -> None:
    tally = result.tally
    label = pool_label(result.pool)
    print(f"\n== {result.scenario} / {label}  ({elapsed:.0f} s)")
    print(f"   {result.setup}")
    errors = ", ".join(f"{name} {n}" for name, n in tally.errors.most_common()) or "none"
    print(f"   calls {tally.calls}   errors {tally.error_count}: {errors}")
    for name, sample in sorted(tally.samples.items()):
        print(f"      {name}: {sample}")
    print(
        f"   wrong-role writes {tally.wrong_role_writes}   "
        f"read-only (25006) errors {tally.read_only_errors}   longest call {tally.longest:.3f} s"
    )
    left = "n/a (servers gone)" if result.sessions_left is None else str(result.sessions_left)
    print(f"   server-side sessions left after close: {left}")
    for name, value in result.figures.items():
        print(f"   {name}: {value}")
    print(f"   qdbpool log records: {LOG_COUNTER.take()}")
    for promise in result.promises:
        print(f"   [{'held' if promise.held else 'BROKEN'}] {promise.text} ({promise.detail})")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__, prog="python -m bench.soak")
    parser.add_argument("--quick", action="store_true", help="short runs (about 1-2 minutes)")
    parser.add_argument(
        "--seconds", type=float, help="seconds of load per scenario and pool (default 40; 6 quick)"
    )
    parser.add_argument(
        "--forks", type=int, help="forks per pool in the fork scenario (default 100; 40 quick)"
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"scenarios (default: {','.join(SCENARIOS)})"
    )
    parser.add_argument(
        "--child-exits",
        default=",".join(MAIN_EXITS),
        help="how forked children leave (fork scenario): os._exit,close,call,fork,exit",
    )
    parser.add_argument("--pools", default=",".join(POOL_KINDS), help="singleton,bounded")
    args = parser.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    args.pools = [p for p in args.pools.split(",") if p]
    args.child_exits = [e for e in args.child_exits.split(",") if e]
    for name, chosen, known in (
        ("--child-exits", args.child_exits, MAIN_EXITS),
        ("--only", args.only, SCENARIOS),
        ("--pools", args.pools, POOL_KINDS),
    ):
        unknown = sorted(set(chosen) - set(known))
        if unknown or not chosen:
            parser.error(f"{name}: unknown {unknown}; choose from {', '.join(known)}")
    if args.seconds is None:
        args.seconds = 6.0 if args.quick else 40.0
    if args.forks is None:
        args.forks = 40 if args.quick else 100
    if not 0 < args.seconds <= 600 or not 0 < args.forks <= 1000:
        parser.error("--seconds must be in (0, 600] and --forks in (0, 1000]")
    return args


def runs(args: argparse.Namespace) -> Iterator[tuple[Result, Callable[[Result], None]]]:
    """(an empty result, what fills it in) for every run asked for, in order."""
    seconds, forks, exits = args.seconds, args.forks, args.child_exits
    scenarios: dict[str, Callable[[Result], None]] = {
        "failover": lambda result: scenario_failover(result, seconds),
        "proxy": lambda result: scenario_proxy(result, seconds),
        "fork": lambda result: scenario_fork(result, seconds, forks, exits),
        "fork-mariadb": lambda result: scenario_fork(result, seconds, forks, exits, "mariadb"),
        "race": lambda result: scenario_race(result, seconds),
        "churn": lambda result: scenario_churn(result, seconds),
    }
    for scenario in args.only:
        # The race alternates both kinds of pool within one run.
        for kind in ["both"] if scenario == "race" else args.pools:
            yield Result(scenario, kind, "", Tally()), scenarios[scenario]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    qdb_log = logging.getLogger("qdbpool")
    qdb_log.addHandler(LOG_COUNTER)
    qdb_log.propagate = False  # counted, not printed: a race logs a warning per close()
    print(
        f"bench/soak.py: fault suite on local PostgreSQL and MariaDB servers; "
        f"scenarios {','.join(args.only)}; "
        f"pools {','.join(args.pools)}; {args.seconds:g} s of load each; pid {os.getpid()}"
    )
    results: list[Result] = []
    began = time.monotonic()
    for result, run in runs(args):
        start = time.monotonic()
        try:
            run(result)
        except ServerUnavailable as exc:  # no server binaries: fine locally, not under CI
            if under_ci():
                result.promise("the servers it needs are installed", False, str(exc))
            else:
                result.setup = f"skipped: {exc}"
        except Exception as exc:  # the scenario itself failed: a broken promise, not a crash
            result.setup = result.setup or "did not run to its end"
            detail = f"{error_name(exc)}: {exc}".splitlines()[0]
            result.promise("the scenario runs to its end", False, detail)
        results.append(result)
        report(result, time.monotonic() - start)
    broken = [(r, p) for r in results for p in r.broken]
    print(f"\n== summary ({time.monotonic() - began:.0f} s)")
    for r in results:
        label = pool_label(r.pool)
        state = f"{len(r.broken)} broken" if r.broken else "all held"
        print(
            f"   {r.scenario:12} {label:20} calls {r.tally.calls:7}  errors {r.tally.error_count:6}"
            f"  wrong-role {r.tally.wrong_role_writes}  longest {r.tally.longest:6.3f} s"
            f"  sessions left {r.sessions_left}  promises: {state}"
        )
    if broken:
        print(f"\nFAILED: {len(broken)} promise(s) broken:")
        for r, p in broken:
            print(f"   {r.scenario} / {pool_label(r.pool)}: {p.text} ({p.detail})")
        return 1
    print("\nOK: every promise held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
