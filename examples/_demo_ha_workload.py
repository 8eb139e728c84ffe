"""The load of `make demo-ha`: worker threads that write and read through @qdbpool.with_conn.

The functions below never see a pool, a host or a retry: @with_conn hands each thread its
own connection to the primary (writes) or to a replica (`read_only=True`), and after a
failover the next call simply lands on the new primary.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import qdbpool

TABLE = "demo_writes"
CREATE_TABLE = f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, worker int NOT NULL)"

PACE = 0.01  # seconds between two calls of one worker: a steady load, not a CPU benchmark
BACKOFF = 0.05  # after a failed call: do not spin while the cluster changes primary


@qdbpool.with_conn()
def insert_row(conn: Any, row_id: int, worker: int) -> int:
    """Write one row; return the port of the server that acknowledged it."""
    row = conn.execute(
        f"INSERT INTO {TABLE} (id, worker) VALUES (%s, %s) RETURNING inet_server_port()",
        (row_id, worker),
    ).fetchone()
    conn.commit()  # acknowledged only once this returns
    return int(row[0])


@qdbpool.with_conn(read_only=True)
def count_rows(conn: Any) -> int:
    """How many rows the replica this thread reads from has replayed so far."""
    row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    conn.commit()  # end the snapshot: a long-open one would hold back the replica
    return int(row[0])


def describe(exc: BaseException) -> str:
    """An error's kind, with its SQLSTATE when it has one (never its text, which may be long)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}({state})" if state else type(exc).__name__


@dataclass
class Tally:
    """What one worker did. Only its own thread writes it; others read the counters."""

    writes_ok: int = 0
    reads_ok: int = 0
    write_failures: int = 0
    read_failures: int = 0
    acked: list[int] = field(default_factory=list)  # ids whose INSERT was committed
    first_ack_on: dict[int, float] = field(default_factory=dict)  # port -> monotonic time
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Totals:
    writes_ok: int
    reads_ok: int
    write_failures: int
    read_failures: int

    @property
    def failures(self) -> int:
        return self.write_failures + self.read_failures


class Workload:
    """`threads` workers, each alternating an INSERT of a fresh id and a row count."""

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._deadline = 0.0  # monotonic; a worker never runs past it, whatever happens
        self.tallies = [Tally() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"demo-worker-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self, deadline: float) -> None:
        self._deadline = deadline
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask every worker to stop; True once all have ended (within `timeout`)."""
        self._stop.set()
        end = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(max(0.0, end - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self, worker: int) -> None:
        tally = self.tallies[worker]
        # Every worker takes every len(tallies)-th id: unique without any shared counter.
        ids = itertools.count(worker, len(self.tallies))
        for turn in itertools.count():
            if self._stop.is_set() or time.monotonic() >= self._deadline:
                return
            ok = self._write(tally, next(ids), worker) if turn % 2 == 0 else self._read(tally)
            self._stop.wait(PACE if ok else BACKOFF)

    def _write(self, tally: Tally, row_id: int, worker: int) -> bool:
        try:
            port = insert_row(row_id, worker)
        except Exception as exc:
            self._failed(tally, exc, write=True)
            return False
        tally.acked.append(row_id)
        tally.first_ack_on.setdefault(port, time.monotonic())
        tally.writes_ok += 1
        return True

    def _read(self, tally: Tally) -> bool:
        try:
            count_rows()
        except Exception as exc:
            self._failed(tally, exc, write=False)
            return False
        tally.reads_ok += 1
        return True

    def _failed(self, tally: Tally, exc: Exception, *, write: bool) -> None:
        if self._stop.is_set():
            return  # the demo is shutting the pool down under us: not the cluster's doing
        tally.errors[("write " if write else "read ") + describe(exc)] += 1
        if write:
            tally.write_failures += 1
        else:
            tally.read_failures += 1

    # -- what the main thread reads ---------------------------------------------------------

    def totals(self) -> Totals:
        tallies = self.tallies
        return Totals(
            writes_ok=sum(t.writes_ok for t in tallies),
            reads_ok=sum(t.reads_ok for t in tallies),
            write_failures=sum(t.write_failures for t in tallies),
            read_failures=sum(t.read_failures for t in tallies),
        )

    def first_ack_on(self, port: int) -> float | None:
        """When a write was first acknowledged by the server on `port` (monotonic)."""
        times = [t.first_ack_on.get(port) for t in self.tallies]
        return min((t for t in times if t is not None), default=None)

    def acked_ids(self) -> list[int]:
        return [row_id for tally in self.tallies for row_id in list(tally.acked)]

    def errors(self) -> Counter[str]:
        return sum((Counter(dict(t.errors)) for t in self.tallies), Counter())
