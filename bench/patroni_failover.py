"""Failover and switchover on a real Patroni cluster: event -> first acknowledged write.

Each run starts, for each event and client in a shuffled order, a fresh Patroni cluster
(etcd + 3 members, primary_start_timeout 0, ttl 5 s, loop_wait 1 s). WRITERS writer threads
(INSERT ... RETURNING the server's port, commit, every 10 ms each) run until warm (>= 1 s
and >= 20 acknowledged writes each); then the event:
  failover   - the leader's postmaster is SIGKILLed and Patroni promotes a replica;
  switchover - a planned switchover is asked of Patroni's REST API (POST /switchover).
Measured, from the kill or the POST ("event"): the first acknowledged write that started
after it and that another server answered ("event->write"); when the promoted member's
PostgreSQL logged "ready to accept connections" ("promoted", Patroni's share; ms
resolution); from then to that first write ("promoted->write", the client's own share); the
calls of all writers that raised until the end of the run (2 s past the first write on the
new leader, at most 20 s after the event).
Clients: qdbpool (Postgres factory over the multi-host DSN, its defaults; @with_conn);
qdbpool+patroni (the same with patroni=<etcd URL>: it follows Patroni's keys too); libpq
(psycopg over the same hosts with target_session_attrs=read-write; on OperationalError it
closes and reconnects, at the same 10 ms pace); hasql (its psycopg 3 PoolManager with its
defaults, acquire_master(), on an event loop in a thread of its own that the writer
threads hand their calls to).
Run: python -m bench.patroni_failover [--runs N] [--events failover,switchover]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg

import qdbpool
from bench._harness import argument_parser, pin_to_one_cpu
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.patroni import PatroniCluster, PatroniMember

USER, PASSWORD = "bench", "bench-secret"
INSERT = "INSERT INTO bench_patroni (seq) VALUES (%s) RETURNING inet_server_port()"
PACE = 0.010
WARMUP, WARMUP_WRITES = 1.0, 20
AFTER_RECOVERY = 2.0
MAX_WINDOW = 20.0
WRITERS = 4
EVENTS = ("failover", "switchover")


@dataclass
class Write:
    start: float
    end: float
    port: int | None  # None: the call raised
    error: str | None = None


@dataclass
class Outcome:
    event: str
    client: str
    kill_to_write: float | None
    promoted: float | None
    failed: int
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def own_share(self) -> float | None:
        """From the promotion to the first acknowledged write: the client's own delay."""
        if self.kill_to_write is None or self.promoted is None:
            return None
        return self.kill_to_write - self.promoted


READY = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC .*database system is ready to accept connections"
)


def promoted_at(member: PatroniMember, after: float) -> float | None:
    """Wall-clock time of the first 'ready to accept connections' in its log after `after`."""
    for line in member.log_path.read_text(errors="replace").splitlines():
        match = READY.match(line)
        if match:
            when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            if when.timestamp() >= after - 0.001:
                return when.timestamp()
    return None


class Writer:
    """Calls `write(seq) -> port` every PACE seconds in a thread of its own, logging each."""

    def __init__(self, write: Callable[[int], int]) -> None:
        self.write = write
        self.log: list[Write] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            start = time.monotonic()
            try:
                port = self.write(seq)
                self.log.append(Write(start, time.monotonic(), port))
            except Exception as exc:
                self.log.append(Write(start, time.monotonic(), None, type(exc).__name__))
            self.stop.wait(PACE)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def qdbpool_writers(
    cluster: PatroniCluster, closers: list[Callable[[], None]], **options: Any
) -> list[Writer]:
    pool = qdbpool.SingletonPool(Postgres(cluster.multi_host_dsn(), **options))
    closers.append(pool.close)

    @qdbpool.with_conn(pool=pool)
    def write(conn: Any, seq: int) -> int:
        row = conn.execute(INSERT, (seq,)).fetchone()
        conn.commit()
        return int(row[0])

    return [Writer(write) for _ in range(WRITERS)]  # a connection per thread


def patroni_writers(cluster: PatroniCluster, closers: list[Callable[[], None]]) -> list[Writer]:
    return qdbpool_writers(cluster, closers, patroni=cluster.patroni_url())


def libpq_writers(cluster: PatroniCluster, closers: list[Callable[[], None]]) -> list[Writer]:
    return [libpq_writer(cluster, closers) for _ in range(WRITERS)]


def libpq_writer(cluster: PatroniCluster, closers: list[Callable[[], None]]) -> Writer:
    conninfo = cluster.multi_host_dsn(target_session_attrs="read-write", connect_timeout=2)
    state: dict[str, psycopg.Connection[Any] | None] = {"conn": None}

    def write(seq: int) -> int:
        conn = state["conn"]
        try:
            if conn is None:
                conn = state["conn"] = psycopg.connect(conninfo)
            row = conn.execute(INSERT, (seq,)).fetchone()
            conn.commit()
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            state["conn"] = None
            raise
        assert row is not None
        return int(row[0])

    def close() -> None:
        conn = state["conn"]
        if conn is not None:
            conn.close()

    closers.append(close)
    return Writer(write)


def hasql_writers(cluster: PatroniCluster, closers: list[Callable[[], None]]) -> list[Writer]:
    from hasql.psycopg3 import PoolManager

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-hasql-loop", daemon=True)
    thread.start()

    async def make() -> Any:
        return PoolManager(cluster.multi_host_dsn())  # it wants a running loop

    manager = asyncio.run_coroutine_threadsafe(make(), loop).result(30)

    async def insert(seq: int) -> int:
        async with manager.acquire_master() as conn:
            cursor = await conn.execute(INSERT, (seq,))
            row = await cursor.fetchone()
            await conn.commit()
        return int(row[0])

    def write(seq: int) -> int:
        return asyncio.run_coroutine_threadsafe(insert(seq), loop).result(30)

    def close() -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(manager.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    closers.append(close)
    return [Writer(write) for _ in range(WRITERS)]


CLIENTS: dict[str, Callable[[PatroniCluster, list[Callable[[], None]]], list[Writer]]] = {
    "qdbpool": qdbpool_writers,
    "qdbpool+patroni": patroni_writers,
    "libpq": libpq_writers,
    "hasql": hasql_writers,
}


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.005)


def one_run(event: str, client: str) -> Outcome:
    closers: list[Callable[[], None]] = []
    with PatroniCluster(3, user=USER, password=PASSWORD) as cluster:
        try:
            cluster.sql("CREATE TABLE bench_patroni (seq int)")
            cluster.sql(f"GRANT INSERT ON bench_patroni TO {USER}")
            cluster.wait_replicated()
            writers = CLIENTS[client](cluster, closers)
            warm_from = time.monotonic()
            wait(
                lambda: (
                    time.monotonic() - warm_from >= WARMUP
                    and all(
                        sum(1 for w in writer.log if w.port is not None) >= WARMUP_WRITES
                        for writer in writers
                    )
                ),
                30,
                f"{client} warm",
            )
            old = cluster.leader
            event_wall, event_at = time.time(), time.monotonic()
            if event == "failover":
                old.kill_postmaster()
            else:  # returns once the new leader takes writes; the writers run meanwhile
                cluster.switchover()

            def first_write() -> Write | None:
                acknowledged = [
                    w
                    for writer in writers
                    for w in list(writer.log)
                    if w.start >= event_at and w.port not in (None, old.port)
                ]
                return min(acknowledged, key=lambda w: w.end, default=None)

            with contextlib.suppress(TimeoutError):
                wait(lambda: first_write() is not None, MAX_WINDOW, f"{client} recovered")
            first = first_write()
            if first is not None:
                end = min(first.end + AFTER_RECOVERY, event_at + MAX_WINDOW)
                time.sleep(max(0.0, end - time.monotonic()))  # the tail of the window
            first = first_write()
            for writer in writers:
                writer.close()
            new = cluster.wait_leader(MAX_WINDOW, other_than=old)
            promoted_wall = promoted_at(new, event_wall)
        finally:
            for close in reversed(closers):
                with contextlib.suppress(Exception):
                    close()
    failed = [w for writer in writers for w in writer.log if w.start >= event_at and w.port is None]
    errors: dict[str, int] = {}
    for w in failed:
        errors[w.error or "?"] = errors.get(w.error or "?", 0) + 1
    return Outcome(
        event,
        client,
        kill_to_write=(first.end - event_at) if first is not None else None,
        promoted=(promoted_wall - event_wall) if promoted_wall is not None else None,
        failed=len(failed),
        errors=errors,
    )


def fmt(seconds: float | None) -> str:
    return f"{seconds * 1000:7.0f} ms" if seconds is not None else "    n/a   "


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per event and client (5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffled orders")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument(
        "--events", default=",".join(EVENTS), help="failover, switchover or both (default)"
    )
    parser.add_argument("--clients", default=",".join(CLIENTS), help="a subset of the clients")
    args = parser.parse_args()
    events = [e for e in args.events.split(",") if e]
    clients = [c for c in args.clients.split(",") if c]
    if not set(events) <= set(EVENTS) or not set(clients) <= set(CLIENTS):
        parser.error(f"events are among {EVENTS}, clients among {tuple(CLIENTS)}")
    # The clients' warnings (psycopg.pool's, under hasql) would drown the table.
    logging.disable(logging.ERROR)
    pinned = "not pinned" if args.no_pin else pin_to_one_cpu()
    print((__doc__ or "").split("Run:")[0].rstrip())
    print(f"{args.runs} run(s), {WRITERS} writers, {pinned} (Patroni, etcd and PostgreSQL too)\n")
    rng = random.Random(args.seed)
    results: dict[tuple[str, str], list[Outcome]] = {(e, c): [] for e in events for c in clients}
    for run in range(1, args.runs + 1):
        order = list(results)
        rng.shuffle(order)
        for event, client in order:
            outcome = one_run(event, client)
            results[event, client].append(outcome)
            print(
                f"run {run} {event:10} {client:15} event->write {fmt(outcome.kill_to_write)}  "
                f"promoted {fmt(outcome.promoted)}  promoted->write {fmt(outcome.own_share)}  "
                f"failed {outcome.failed:3} {outcome.errors}",
                flush=True,
            )
    print("\nmedians")
    for (event, client), outcomes in results.items():
        print(
            f"  {event:10} {client:15} event->write "
            f"{fmt(median([o.kill_to_write for o in outcomes]))}  "
            f"promoted {fmt(median([o.promoted for o in outcomes]))}  "
            f"promoted->write {fmt(median([o.own_share for o in outcomes]))}  "
            f"failed {statistics.median(o.failed for o in outcomes):5.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
