"""Failover: how long writes stop, and what fails, when the primary dies and a standby takes over.

Each run starts a fresh local cluster (a primary and two streaming standbys) for each
client, in a shuffled order, so every client meets the same conditions. Writers
(INSERT + commit every 10 ms) and readers (SELECT on a replica route + commit every 10 ms),
one of each for the threaded clients, 16 of each (tasks) for the asyncio ones, run until
warm; then the primary is SIGKILLed and a standby promoted, the others re-pointed,
as an orchestrator would (PostgresCluster.failover()). Observed until both have recovered
(and at least 2 s, 1 s past the later recovery), at most 10 s after the kill.
Clients: qdbpool (Postgres factory, defaults; @with_conn, reader read_only=True);
qdbpool.aio (qdbpool.aio.factories.Postgres, and AsyncPG, defaults, in an asyncio loop
in its own thread); hasql (hasql.psycopg3.PoolManager, and hasql.asyncpg's, defaults;
acquire_master / acquire_replica, in an asyncio loop in its own thread); plain psycopg
(multi-host conninfo with target_session_attrs=read-write for the writer, =standby for the
reader; on OperationalError close and reconnect, same conninfo).
Measured: kill -> first acknowledged write that started after the kill, answered by a live
server (the same for reads); failed operations (calls that raised) from the kill to the end
of the run (for writes, the most one writer lost); successful reads after the kill that a
primary answered; acknowledged writes missing on the new primary afterwards (the test bed
runs synchronous_commit = off).
Run: python -m bench.failover [--runs N] [--quick]
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import random
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

import psycopg

import qdbpool
from bench._harness import argument_parser, pin_to_one_cpu
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.postgres import Node, PostgresCluster

USER, PASSWORD = "bench", "bench-secret"
TABLE = "bench_failover"
# Both say which server answered (its port): a write acknowledged by the old primary in the
# few milliseconds its backends outlive the start of the kill is no recovery.
INSERT = f"INSERT INTO {TABLE} (seq) VALUES (%s) RETURNING inet_server_port()"
READ = f"SELECT pg_is_in_recovery(), inet_server_port(), max(seq) FROM {TABLE}"
INSERT_ASYNCPG = INSERT.replace("%s", "$1")  # asyncpg's placeholders
ASYNC_TASKS = 16  # writer tasks, and reader tasks, of each asyncio client

INTERVAL = 0.010  # between two operations of one writer or reader
WARMUP = 1.0  # seconds of successful traffic before the kill
WARMUP_OPS = 20  # ... and at least this many successful writes and reads
READY_TIMEOUT = 30.0  # a client not warm by then fails the run
MIN_WINDOW = 2.0  # observe at least this long after the kill
GRACE = 1.0  # ... and this long after the later of the two recoveries
MAX_WINDOW = 10.0  # a run ends at most this long after the kill
FAILOVER_TIMEOUT = 8.0  # for cluster.failover(); a run that fails over slower fails
STOP_TIMEOUT = 10.0  # for the client's threads to finish their last operation

HEADER = """\
bench.failover: SIGKILL the primary of a 3-node local PostgreSQL cluster and promote a
  standby (cluster.failover()) under writers (INSERT + commit every 10 ms) and readers
  (replica route, SELECT + commit every 10 ms), after a >= 1 s warm-up: one writer and
  one reader thread for the threaded clients, {tasks} writer and {tasks} reader tasks for the
  asyncio ones. {runs} run(s); in each, every client gets its own fresh cluster, in a
  shuffled order.
  kill->write: until the first acknowledged write that started after the kill began and
  was answered by a live server (not the old primary, whose backends outlive the start of
  the kill by a few ms); the same for reads. failed: calls that raised, from the kill to
  the end of the run (>= 2 s, 1 s past both recoveries, at most {window:g} s after the
  kill); for writes, the most that one writer lost.
  Clients: qdbpool Postgres factory defaults + @with_conn; qdbpool.aio the same for
  asyncio (BoundedPool, defaults), over psycopg 3 and over asyncpg; hasql PoolManager
  defaults, over psycopg 3 and over asyncpg; psycopg with libpq target_session_attrs
  (read-write / standby), reconnecting on OperationalError.
  'reads on primary': reads after the kill that a primary answered.
  'acked lost': acknowledged writes missing on the new primary, all runs (the test bed
  runs synchronous_commit=off). 'promoted': kill -> new primary ready, from its log;
  'promoted->write': from then to the first acknowledged write (the client's own share).
"""

TARGET_WRITE = 0.10  # qdbpool: median kill -> first acknowledged write, seconds
TARGET_FAILED_READS = 0
TARGET_FAILED_WRITES = 1


# --------------------------------------------------------------------------------------------
# What clients record
# --------------------------------------------------------------------------------------------


@dataclass
class Op:
    start: float  # time.monotonic()
    end: float
    ok: bool
    on_primary: bool = False  # a read a primary answered
    port: int | None = None  # the server that answered
    seq: int | None = None  # a write's value
    error: str | None = None
    worker: int = 0  # which writer (or reader) of the client


def describe(exc: BaseException) -> str:
    return type(exc).__name__


class Client(abc.ABC):
    """A writer and a reader against one cluster; they record every operation."""

    name = "?"

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.writes: list[Op] = []
        self.reads: list[Op] = []
        self.stopping = threading.Event()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []

    def next_seq(self) -> int:
        return next(self._seq)

    @abc.abstractmethod
    def start(self) -> None:
        """Start the writer and the reader."""

    def stop(self, timeout: float) -> bool:
        """Ask them to stop; True if every thread ended within `timeout`."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def close(self) -> None:
        """Release what the client holds (after stop)."""
        self.stopping.set()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop_writes(self, write: Callable[[int], int]) -> None:
        while not self.stopping.is_set():
            seq = self.next_seq()
            start = time.monotonic()
            try:
                port = write(seq)
            except Exception as exc:
                self.writes.append(Op(start, time.monotonic(), False, seq=seq, error=describe(exc)))
            else:
                self.writes.append(Op(start, time.monotonic(), True, seq=seq, port=port))
            self.stopping.wait(INTERVAL)

    def _loop_reads(self, read: Callable[[], tuple[bool, int]]) -> None:
        while not self.stopping.is_set():
            start = time.monotonic()
            try:
                on_primary, port = read()
            except Exception as exc:
                self.reads.append(Op(start, time.monotonic(), False, error=describe(exc)))
            else:
                self.reads.append(Op(start, time.monotonic(), True, on_primary, port))
            self.stopping.wait(INTERVAL)


# --------------------------------------------------------------------------------------------
# (a) qdbpool
# --------------------------------------------------------------------------------------------


def _answered_write(row: tuple[Any, ...] | None) -> int:
    if row is None:
        raise RuntimeError("INSERT ... RETURNING returned no row")
    return int(row[0])


def _answered_read(row: tuple[Any, ...] | None) -> tuple[bool, int]:
    """(whether a primary answered, its port)."""
    if row is None:
        raise RuntimeError("SELECT returned no row")
    return row[0] is False, int(row[1])


def _insert(conn: psycopg.Connection[Any], seq: int) -> int:
    row = conn.execute(INSERT, (seq,)).fetchone()
    conn.commit()
    return _answered_write(row)


def _select(conn: psycopg.Connection[Any]) -> tuple[bool, int]:
    row = conn.execute(READ).fetchone()
    conn.commit()
    return _answered_read(row)


_qdbpool_write = cast("Callable[[int], int]", qdbpool.with_conn()(_insert))
_qdbpool_read = cast("Callable[[], tuple[bool, int]]", qdbpool.with_conn(read_only=True)(_select))


class QdbpoolClient(Client):
    name = "qdbpool"

    def start(self) -> None:
        qdbpool.initialize(Postgres(self.cluster.multi_host_dsn()))
        self._spawn("writer", lambda: self._loop_writes(_qdbpool_write))
        self._spawn("reader", lambda: self._loop_reads(_qdbpool_read))

    def close(self) -> None:
        qdbpool.close()


# --------------------------------------------------------------------------------------------
# (a') asyncio clients: qdbpool.aio and hasql, each over psycopg 3 and over asyncpg
# --------------------------------------------------------------------------------------------

Write = Callable[[int], Awaitable[int]]
Read = Callable[[], Awaitable[tuple[bool, int]]]


class AsyncClient(Client):
    """ASYNC_TASKS writer tasks and as many reader tasks, in an asyncio loop in a thread
    of its own (as hasql runs). A subclass opens its pool (`_open`): a write, a read, and
    how to close it."""

    def start(self) -> None:
        self._spawn("loop", lambda: asyncio.run(self._main()))

    @abc.abstractmethod
    async def _open(self) -> tuple[Write, Read, Callable[[], Awaitable[None]]]: ...

    async def _main(self) -> None:
        write, read, close = await self._open()
        try:
            await asyncio.gather(
                *(self._writer(write, n) for n in range(ASYNC_TASKS)),
                *(self._reader(read, n) for n in range(ASYNC_TASKS)),
            )
        finally:
            await asyncio.wait_for(close(), timeout=STOP_TIMEOUT / 2)

    async def _writer(self, write: Write, worker: int) -> None:
        while not self.stopping.is_set():
            seq = self.next_seq()
            start = time.monotonic()
            try:
                port = await write(seq)
            except Exception as exc:
                end, error = time.monotonic(), describe(exc)
                self.writes.append(Op(start, end, False, seq=seq, error=error, worker=worker))
            else:
                end = time.monotonic()
                self.writes.append(Op(start, end, True, seq=seq, port=port, worker=worker))
            await asyncio.sleep(INTERVAL)

    async def _reader(self, read: Read, worker: int) -> None:
        while not self.stopping.is_set():
            start = time.monotonic()
            try:
                on_primary, port = await read()
            except Exception as exc:
                end, error = time.monotonic(), describe(exc)
                self.reads.append(Op(start, end, False, error=error, worker=worker))
            else:
                end = time.monotonic()
                self.reads.append(Op(start, end, True, on_primary, port, worker=worker))
            await asyncio.sleep(INTERVAL)


async def _insert_psycopg(conn: Any, seq: int) -> int:
    cursor = await conn.execute(INSERT, (seq,))
    port = _answered_write(await cursor.fetchone())
    await conn.commit()
    return port


async def _select_psycopg(conn: Any) -> tuple[bool, int]:
    cursor = await conn.execute(READ)
    answer = _answered_read(await cursor.fetchone())
    await conn.commit()
    return answer


async def _insert_asyncpg(conn: Any, seq: int) -> int:
    return _answered_write(await conn.fetchrow(INSERT_ASYNCPG, seq))  # autocommit


async def _select_asyncpg(conn: Any) -> tuple[bool, int]:
    return _answered_read(await conn.fetchrow(READ))


class QdbpoolAioClient(AsyncClient):
    """qdbpool.aio over psycopg 3: BoundedPool and factory with their defaults."""

    name = "qdbpool.aio"
    asyncpg = False

    async def _open(self) -> tuple[Write, Read, Callable[[], Awaitable[None]]]:
        import qdbpool.aio as aio
        from qdbpool.aio.factories import AsyncPG
        from qdbpool.aio.factories import Postgres as AioPostgres

        factory = (AsyncPG if self.asyncpg else AioPostgres)(self.cluster.multi_host_dsn())
        pool = aio.BoundedPool(factory)
        insert = _insert_asyncpg if self.asyncpg else _insert_psycopg
        select = _select_asyncpg if self.asyncpg else _select_psycopg

        @aio.with_conn(pool=pool)
        async def write(conn: Any, seq: int) -> int:
            return await insert(conn, seq)

        @aio.with_conn(pool=pool, read_only=True)
        async def read(conn: Any) -> tuple[bool, int]:
            return await select(conn)

        return write, read, lambda: pool.close(timeout=STOP_TIMEOUT / 4)


class QdbpoolAsyncpgClient(QdbpoolAioClient):
    """qdbpool.aio over asyncpg (the AsyncPG factory)."""

    name = "qdbpool.aio asyncpg"
    asyncpg = True


class HasqlClient(AsyncClient):
    """hasql's psycopg 3 PoolManager, defaults: acquire_master() / acquire_replica()."""

    name = "hasql"
    asyncpg = False

    def __init__(self, cluster: PostgresCluster) -> None:
        super().__init__(cluster)
        self.close_error: str | None = None

    async def _open(self) -> tuple[Write, Read, Callable[[], Awaitable[None]]]:
        hasql = importlib.import_module("hasql.asyncpg" if self.asyncpg else "hasql.psycopg3")
        insert = _insert_asyncpg if self.asyncpg else _insert_psycopg
        select = _select_asyncpg if self.asyncpg else _select_psycopg
        manager: Any = hasql.PoolManager(self.cluster.multi_host_dsn())  # needs the running loop

        async def write(seq: int) -> int:
            async with manager.acquire_master() as conn:
                return await insert(conn, seq)

        async def read() -> tuple[bool, int]:
            async with manager.acquire_replica() as conn:
                return await select(conn)

        async def close() -> None:
            try:
                await asyncio.wait_for(manager.close(), timeout=STOP_TIMEOUT / 4)
            except Exception as exc:
                self.close_error = describe(exc)

        return write, read, close


class HasqlAsyncpgClient(HasqlClient):
    """hasql's asyncpg PoolManager, defaults."""

    name = "hasql asyncpg"
    asyncpg = True


# --------------------------------------------------------------------------------------------
# (c) plain psycopg with libpq's target_session_attrs
# --------------------------------------------------------------------------------------------


class Reconnecting:
    """One psycopg connection; on OperationalError: close, reconnect (same conninfo), re-raise."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        self.conn = psycopg.connect(self.conninfo)
        return self.conn

    def run(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        conn = self.conn if self.conn is not None and not self.conn.closed else self._connect()
        try:
            return work(conn)
        except psycopg.OperationalError:
            conn.close()
            self.conn = None
            with contextlib.suppress(psycopg.Error):  # if that fails too: next time
                self._connect()
            raise
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class PsycopgClient(Client):
    name = "psycopg + libpq"

    def __init__(self, cluster: PostgresCluster) -> None:
        super().__init__(cluster)
        # connect_timeout: libpq waits forever by default; 2 s is libpq's minimum.
        self.writer = Reconnecting(
            cluster.multi_host_dsn(target_session_attrs="read-write", connect_timeout=2)
        )
        self.reader = Reconnecting(
            cluster.multi_host_dsn(target_session_attrs="standby", connect_timeout=2)
        )

    def start(self) -> None:
        self._spawn("writer", lambda: self._loop_writes(self._write))
        self._spawn("reader", lambda: self._loop_reads(self._read))

    def _write(self, seq: int) -> int:
        port: int = self.writer.run(lambda conn: _insert(conn, seq))
        return port

    def _read(self) -> tuple[bool, int]:
        answer: tuple[bool, int] = self.reader.run(_select)
        return answer

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


CLIENTS: dict[str, type[Client]] = {
    "qdbpool": QdbpoolClient,
    "qdbpool.aio": QdbpoolAioClient,
    "qdbpool.aio asyncpg": QdbpoolAsyncpgClient,
    "hasql": HasqlClient,
    "hasql asyncpg": HasqlAsyncpgClient,
    "psycopg": PsycopgClient,
}


# --------------------------------------------------------------------------------------------
# One run of one client
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    client: str
    run: int
    kill_to_write: float | None = None  # None: no write acknowledged within the window
    kill_to_read: float | None = None
    failed_writes: int = 0
    failed_reads: int = 0
    reads_on_primary: int = 0
    lost_writes: int = 0
    late_acks: int = 0  # writes started after the kill began, acknowledged by the old primary
    window: float = 0.0  # how long the run was observed after the kill
    failover_call: float | None = None  # how long cluster.failover() took
    promoted_after: float | None = None  # kill -> new primary ready (from its log)
    errors: Counter[str] = field(default_factory=Counter)
    problem: str | None = None  # the run could not be measured
    note: str | None = None  # something odd that did not spoil the measurement


def pin_cluster(cluster: PostgresCluster, cpus: set[int]) -> tuple[int, int]:
    """Pin every node's postmaster and children; (processes pinned, processes seen)."""
    pinned = seen = 0
    for node in cluster.nodes:
        for pid in (node.pid, *node.backend_pids()):
            if pid is None:
                continue
            seen += 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(pid, cpus)
                pinned += os.sched_getaffinity(pid) == cpus
    return pinned, seen


_READY_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) (UTC|GMT) \[\d+\] LOG:\s+"
    r"database system is ready to accept connections",
    re.MULTILINE,
)


def promoted_at(node: Node, after_wall: float) -> float | None:
    """Wall-clock time at which `node` logged it accepts connections, after `after_wall`."""
    try:
        text = node.log_path.read_text(errors="replace")
    except OSError:
        return None
    for match in _READY_LINE.finditer(text):
        stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f")
        wall = stamp.replace(tzinfo=timezone.utc).timestamp()
        if wall >= after_wall - 0.001:  # the log has millisecond resolution
            return wall
    return None


def first_ok_after(ops: Sequence[Op], when: float, dead_port: int) -> float | None:
    """When the first operation started at or after `when` succeeded on a live server."""
    return min(
        (op.end for op in ops if op.ok and op.start >= when and op.port != dead_port),
        default=None,
    )


def wait_warm(client: Client) -> None:
    started = time.monotonic()
    while True:
        now = time.monotonic()
        writes = sum(op.ok for op in list(client.writes))
        reads = sum(op.ok for op in list(client.reads))
        if now - started >= WARMUP and writes >= WARMUP_OPS and reads >= WARMUP_OPS:
            return
        if now - started >= READY_TIMEOUT:
            raise TimeoutError(
                f"not warm after {READY_TIMEOUT:g}s: {writes} writes and {reads} reads succeeded"
            )
        time.sleep(0.02)


def observe(client: Client, killed: float, dead_port: int) -> float:
    """Wait until both recovered (plus margins) or the window closes; return its length."""
    while True:
        now = time.monotonic()
        wrote = first_ok_after(list(client.writes), killed, dead_port)
        read = first_ok_after(list(client.reads), killed, dead_port)
        if now >= killed + MAX_WINDOW:
            return now - killed
        if (
            wrote is not None
            and read is not None
            and now >= max(killed + MIN_WINDOW, wrote + GRACE, read + GRACE)
        ):
            return now - killed
        time.sleep(0.02)


def run_one(kind: str, run: int, cpus: set[int] | None) -> RunResult:
    result = RunResult(kind, run)
    with PostgresCluster(standbys=2, user=USER, password=PASSWORD) as cluster:
        if cpus is not None:
            pin_cluster(cluster, cpus)
        with psycopg.connect(cluster.primary.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (seq bigint PRIMARY KEY)")
        cluster.wait_replicated()
        client = CLIENTS[kind](cluster)
        stopped = False
        try:
            client.start()
            wait_warm(client)
            dead_port = cluster.primary.port
            wall, killed = time.time(), time.monotonic()
            try:
                new_primary = cluster.failover(timeout=FAILOVER_TIMEOUT)
            except Exception as exc:
                result.problem = f"failover failed: {describe(exc)}: {exc}"
                return result
            result.failover_call = time.monotonic() - killed
            ready = promoted_at(new_primary, wall)
            result.promoted_after = ready - wall if ready is not None else None
            result.window = observe(client, killed, dead_port)
            stopped = client.stop(STOP_TIMEOUT)
            if not stopped:
                result.note = f"threads still busy {STOP_TIMEOUT:g}s after the window"
            writes, reads = list(client.writes), list(client.reads)
            wrote = first_ok_after(writes, killed, dead_port)
            read = first_ok_after(reads, killed, dead_port)
            result.kill_to_write = wrote - killed if wrote is not None else None
            result.kill_to_read = read - killed if read is not None else None
            after = [op for op in writes + reads if op.end >= killed]
            # The target is per writer: one failed call each, at most (the one in flight).
            result.failed_writes = max(
                Counter(op.worker for op in writes if not op.ok and op.end >= killed).values(),
                default=0,
            )
            result.failed_reads = sum(not op.ok for op in reads if op.end >= killed)
            result.reads_on_primary = sum(
                op.ok and op.on_primary for op in reads if op.end >= killed
            )
            result.errors.update(op.error for op in after if op.error)
            result.late_acks = sum(
                op.ok and op.port == dead_port for op in writes if op.start >= killed
            )
            acked = {op.seq for op in writes if op.ok}
            kept = {row[0] for row in cluster.primary.sql(f"SELECT seq FROM {TABLE}")}
            result.lost_writes = len(acked - kept)
        except Exception as exc:
            result.problem = f"{describe(exc)}: {exc}"
        finally:
            if not stopped:
                client.stop(2.0)  # an error or Ctrl-C: do not wait long, the cluster goes
            with contextlib.suppress(Exception):
                client.close()
            if isinstance(client, HasqlClient) and client.close_error:
                result.note = f"PoolManager.close() failed: {client.close_error}"
    return result


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.3f}"


def _median_time(values: Sequence[float | None]) -> float | None:
    """Median with 'never recovered' counted as the longest; None if that is the median."""
    known = sorted((v if v is not None else float("inf")) for v in values)
    if not known:
        return None
    mid = statistics.median_low(known) if len(known) % 2 else statistics.median(known)
    return None if mid == float("inf") else mid


def after_promotion(results: Sequence[RunResult]) -> list[float | None]:
    """The client's own share: new primary ready (its log) -> first acknowledged write."""
    return [
        None if r.kill_to_write is None else r.kill_to_write - r.promoted_after
        for r in results
        if r.promoted_after is not None
    ]


def summary(results: Sequence[RunResult], kinds: Sequence[str]) -> str:
    header = (
        f"  {'client':<20} {'kill->write s: median':>21} {'min':>6} {'max':>6}"
        f"  {'promoted->write':>15}  {'failed writes':>13}  {'failed reads':>12}"
        f"  {'kill->read':>10}  {'reads on primary':>16}  {'acked lost':>10}"
    )
    lines = [header, "  " + "-" * (len(header) - 2)]
    for kind in kinds:
        mine = [r for r in results if r.client == kind and r.problem is None]
        name = CLIENTS[kind].name
        if not mine:
            lines.append(f"  {name:<20} (no run could be measured)")
            continue
        to_write = [r.kill_to_write for r in mine]
        known = [t for t in to_write if t is not None]
        never = len(to_write) - len(known)
        fw = [r.failed_writes for r in mine]
        fr = [r.failed_reads for r in mine]
        lines.append(
            f"  {name:<20} {_secs(_median_time(to_write)):>21}"
            f" {_secs(min(known) if known else None):>6}"
            f" {_secs(max(known) if known and not never else None):>6}"
            f"  {_secs(_median_time(after_promotion(mine))):>15}"
            f"  {f'{statistics.median(fw):g} (max {max(fw)})':>13}"
            f"  {f'{statistics.median(fr):g} (max {max(fr)})':>12}"
            f"  {_secs(_median_time([r.kill_to_read for r in mine])):>10}"
            f"  {statistics.median(r.reads_on_primary for r in mine):>16g}"
            f"  {sum(r.lost_writes for r in mine):>10}"
        )
        if never:
            lines.append(
                f"  {'':<20} {never} run(s) without any acknowledged write within the window"
            )
    return "\n".join(lines)


def verdict(results: Sequence[RunResult]) -> str:
    """The targets, for the threaded client and the asyncio one."""
    clients = ("qdbpool", "qdbpool.aio", "qdbpool.aio asyncpg")
    return "\n".join(_verdict_of(results, client) for client in clients)


def _verdict_of(results: Sequence[RunResult], client: str) -> str:
    mine = [r for r in results if r.client == client and r.problem is None]
    if not mine:
        return f"{client}: no run could be measured"
    to_write = _median_time([r.kill_to_write for r in mine])
    fw = statistics.median(r.failed_writes for r in mine)
    fr = statistics.median(r.failed_reads for r in mine)

    def ok(good: bool) -> str:
        return "met" if good else "MISSED"

    return (
        f"{client} targets: median kill->write {_secs(to_write)} s (<= {TARGET_WRITE}):"
        f" {ok(to_write is not None and to_write <= TARGET_WRITE)};"
        f" failed reads median {fr:g} (= {TARGET_FAILED_READS}): {ok(fr <= TARGET_FAILED_READS)};"
        f" failed writes median {fw:g} (<= {TARGET_FAILED_WRITES}):"
        f" {ok(fw <= TARGET_FAILED_WRITES)}"
    )


def print_run(r: RunResult) -> None:
    name = CLIENTS[r.client].name
    if r.problem is not None:
        print(f"  run {r.run + 1} {name:<20} NOT MEASURED: {r.problem}", flush=True)
        return
    errors = ", ".join(f"{k} x{v}" for k, v in r.errors.most_common(3)) or "-"
    print(
        f"  run {r.run + 1} {name:<20} write {_secs(r.kill_to_write):>6} s, read"
        f" {_secs(r.kill_to_read):>6} s; failed w/r {r.failed_writes}/{r.failed_reads};"
        f" on primary {r.reads_on_primary}; lost {r.lost_writes}"
        f" (old primary acked {r.late_acks} after kill);"
        f" promoted {_secs(r.promoted_after)} s, failover() {_secs(r.failover_call)} s,"
        f" window {r.window:.1f} s; errors: {errors}" + (f"; NOTE: {r.note}" if r.note else ""),
        flush=True,
    )


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per client (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 runs (a smoke run)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffled orders")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--log", action="store_true", help="show the clients' own log output")
    args = parser.parse_args()
    if not args.log:  # hasql and psycopg_pool log every refused connection, with tracebacks
        for name in ("hasql", "psycopg", "qdbpool"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    runs = 2 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be >= 1")
    began = time.monotonic()
    kinds = list(CLIENTS)

    print(HEADER.format(runs=runs, window=MAX_WINDOW, tasks=ASYNC_TASKS).rstrip())
    cpus: set[int] | None = None
    if args.no_pin:
        print("  not pinned: the client and the servers use every CPU")
    else:
        print(
            f"  client {pin_to_one_cpu()}; every server (postmasters and their children) "
            "pinned to the same CPU"
        )
        cpus = os.sched_getaffinity(0)
    print(flush=True)

    rng = random.Random(args.seed)
    results: list[RunResult] = []
    try:
        for run in range(runs):
            order = list(kinds)
            rng.shuffle(order)
            for kind in order:
                result = run_one(kind, run, cpus)
                results.append(result)
                print_run(result)
    except KeyboardInterrupt:
        print("\ninterrupted: every cluster started so far has been closed")
        if not results:
            return 130
        print("partial results:")

    promoted = [r.promoted_after for r in results if r.promoted_after is not None]
    calls = [r.failover_call for r in results if r.failover_call is not None]
    print()
    print(summary(results, kinds))
    print()
    if promoted and calls:
        print(
            "reference: kill -> new primary ready (server log): median"
            f" {statistics.median(promoted):.3f} s; cluster.failover() returned after median"
            f" {statistics.median(calls):.3f} s"
        )
    if not args.quick:  # two runs judge nothing
        print(verdict(results))
    print(f"\n(total run time {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
