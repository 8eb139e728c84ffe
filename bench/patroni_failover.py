"""Failover on a real Patroni cluster: kill -> first acknowledged write, qdbpool vs libpq.

Each run starts, for each client in a shuffled order, a fresh Patroni cluster (etcd + 3
members, primary_start_timeout 0, ttl 5 s, loop_wait 1 s). One writer (INSERT ... RETURNING
the server's port, commit, every 10 ms) runs until warm (>= 1 s and >= 20 acknowledged
writes); then the leader's postmaster is SIGKILLed and Patroni promotes a replica.
Measured, from the kill: the first acknowledged write that started after it and that another
server answered ("kill->write"); when the promoted member's PostgreSQL logged "ready to
accept connections" ("promoted", Patroni's share; ms resolution); from then to that first
write ("promoted->write", the client's own share); the calls that raised until the end of
the run (2 s past the first write on the new leader, at most 20 s after the kill).
Clients: qdbpool (Postgres factory over the multi-host DSN, its defaults; @with_conn);
libpq (psycopg over the same hosts with target_session_attrs=read-write; on
OperationalError it closes and reconnects, at the same 10 ms pace).
Run: python -m bench.patroni_failover [--runs N]
"""

from __future__ import annotations

import argparse
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
from bench._harness import pin_to_one_cpu
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.patroni import PatroniCluster, PatroniMember

USER, PASSWORD = "bench", "bench-secret"
INSERT = "INSERT INTO bench_patroni (seq) VALUES (%s) RETURNING inet_server_port()"
PACE = 0.010
WARMUP, WARMUP_WRITES = 1.0, 20
AFTER_RECOVERY = 2.0
MAX_WINDOW = 20.0


@dataclass
class Write:
    start: float
    end: float
    port: int | None  # None: the call raised
    error: str | None = None


@dataclass
class Outcome:
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


def qdbpool_writer(cluster: PatroniCluster, closers: list[Callable[[], None]]) -> Writer:
    pool = qdbpool.SingletonPool(Postgres(cluster.multi_host_dsn()))
    closers.append(pool.close)

    @qdbpool.with_conn(pool=pool)
    def write(conn: Any, seq: int) -> int:
        row = conn.execute(INSERT, (seq,)).fetchone()
        conn.commit()
        return int(row[0])

    return Writer(write)


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


CLIENTS: dict[str, Callable[[PatroniCluster, list[Callable[[], None]]], Writer]] = {
    "qdbpool": qdbpool_writer,
    "libpq": libpq_writer,
}


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.005)


def one_run(client: str) -> Outcome:
    closers: list[Callable[[], None]] = []
    with PatroniCluster(3, user=USER, password=PASSWORD) as cluster:
        try:
            cluster.sql("CREATE TABLE bench_patroni (seq int)")
            cluster.sql(f"GRANT INSERT ON bench_patroni TO {USER}")
            cluster.wait_replicated()
            writer = CLIENTS[client](cluster, closers)
            warm_from = time.monotonic()
            wait(
                lambda: (
                    time.monotonic() - warm_from >= WARMUP
                    and sum(1 for w in writer.log if w.port is not None) >= WARMUP_WRITES
                ),
                30,
                f"{client} warm",
            )
            old = cluster.leader
            killed_wall, killed_at = time.time(), time.monotonic()
            old.kill_postmaster()

            def first_write() -> Write | None:
                return next(
                    (
                        w
                        for w in list(writer.log)
                        if w.start >= killed_at and w.port not in (None, old.port)
                    ),
                    None,
                )

            with contextlib.suppress(TimeoutError):
                wait(lambda: first_write() is not None, MAX_WINDOW, f"{client} recovered")
            first = first_write()
            if first is not None:
                end = min(first.end + AFTER_RECOVERY, killed_at + MAX_WINDOW)
                time.sleep(max(0.0, end - time.monotonic()))  # the tail of the window
            writer.close()
            new = cluster.wait_leader(MAX_WINDOW, other_than=old)
            promoted_wall = promoted_at(new, killed_wall)
        finally:
            for close in reversed(closers):
                with contextlib.suppress(Exception):
                    close()
    failed = [w for w in writer.log if w.start >= killed_at and w.port is None]
    errors: dict[str, int] = {}
    for w in failed:
        errors[w.error or "?"] = errors.get(w.error or "?", 0) + 1
    return Outcome(
        client,
        kill_to_write=(first.end - killed_at) if first is not None else None,
        promoted=(promoted_wall - killed_wall) if promoted_wall is not None else None,
        failed=len(failed),
        errors=errors,
    )


def fmt(seconds: float | None) -> str:
    return f"{seconds * 1000:7.0f} ms" if seconds is not None else "    n/a   "


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per client (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the shuffled orders")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the clients' warnings would drown the table
    pinned = "not pinned" if args.no_pin else pin_to_one_cpu()
    print((__doc__ or "").split("Run:")[0].rstrip())
    print(f"{args.runs} run(s), {pinned} (Patroni, etcd and PostgreSQL too)\n")
    rng = random.Random(args.seed)
    results: dict[str, list[Outcome]] = {name: [] for name in CLIENTS}
    for run in range(1, args.runs + 1):
        order = list(CLIENTS)
        rng.shuffle(order)
        for client in order:
            outcome = one_run(client)
            results[client].append(outcome)
            print(
                f"run {run} {client:8} kill->write {fmt(outcome.kill_to_write)}  "
                f"promoted {fmt(outcome.promoted)}  promoted->write {fmt(outcome.own_share)}  "
                f"failed {outcome.failed:3} {outcome.errors}",
                flush=True,
            )
    print("\nmedians")
    for client, outcomes in results.items():
        print(
            f"  {client:8} kill->write {fmt(median([o.kill_to_write for o in outcomes]))}  "
            f"promoted {fmt(median([o.promoted for o in outcomes]))}  "
            f"promoted->write {fmt(median([o.own_share for o in outcomes]))}  "
            f"failed {statistics.median(o.failed for o in outcomes):5.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
