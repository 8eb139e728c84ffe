"""A live failover under load: `make demo-ha` (DEMO_ARGS="--seconds 20 --threads 4").

1. A PostgreSQL cluster starts on 127.0.0.1, on free high ports, in a temporary directory
   (qdbpool.testing.postgres): a primary and two streaming standbys. A server already
   running on this machine (5432) is left alone.
2. The global pool is a SingletonPool over the Postgres factory, given nothing but the
   cluster's multi-host DSN: its monitor finds out which host is the primary.
3. Worker threads call two plain functions decorated with @qdbpool.with_conn: an INSERT of
   a unique id (on the primary) and a row count (read_only=True: on a replica).
4. A third of the way in (--kill-at), every process of the primary is SIGKILLed, the standby
   with the most WAL is promoted and the other one follows it. Nobody tells the pool.
5. At the end, every acknowledged id is looked up on the new primary.

The cluster's password is random (or $QDBPOOL_DEMO_PASSWORD) and never printed.

Replication is synchronous (ANY 1 standby): a commit is acknowledged once a standby has it
too, which is what lets a failover keep every acknowledged write. (With asynchronous
commit, the test bed's default, the last milliseconds of acknowledged writes die with the
primary.)

Exit status: 0 when the failover happened, writes came back and no acknowledged write is
missing; 1 otherwise; 2 when PostgreSQL is not installed; 130 after Ctrl-C (143 after
SIGTERM). Every server it started is stopped and its directory removed in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import Sequence

# The demo's own helpers, next to this file: output and Ctrl-C, the load, the summary.
from _demo_ha_console import Console, LogToConsole, RateMeter, StopRequest, Ticker
from _demo_ha_report import FailoverRecord, primaries, summarize, where
from _demo_ha_workload import CREATE_TABLE, Workload

import qdbpool
from qdbpool.cluster import Role

try:
    from qdbpool.factories.postgres import Postgres
    from qdbpool.testing.postgres import PostgresCluster, ServerUnavailable
except ImportError as exc:  # psycopg, which the factory and the test bed need
    print(f"demo-ha: cannot run: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

PASSWORD_ENV = "QDBPOOL_DEMO_PASSWORD"  # default: a random one; it is never printed
# Synchronous replication: a commit is acknowledged once a standby has flushed it too.
SYNC_SETTINGS = {"synchronous_commit": "on", "synchronous_standby_names": "ANY 1 (*)"}
READY_TIMEOUT = 10.0  # for the pool to see the primary and both replicas at start
FAILOVER_TIMEOUT = 15.0  # for the promotion and the re-pointing of the other standby
RECOVERY_GRACE = 10.0  # past the planned end, how long to wait for writes to come back
JOIN_TIMEOUT = 5.0  # for the workers' last calls (a call waits at most acquire_timeout)


class Demo:
    """One run: cluster, pool, load, failover and summary; everything is undone at the end."""

    def __init__(
        self,
        args: argparse.Namespace,
        cluster: PostgresCluster,
        console: Console,
        stop: StopRequest,
    ) -> None:
        self.args = args
        self.cluster = cluster
        self.console = console
        self.stop = stop
        self.workload = Workload(args.threads)
        self.failover = FailoverRecord()
        self.meter = RateMeter()
        self.t0 = time.monotonic()  # reset when the workers start
        self.pool: qdbpool.Pool | None = None
        self.factory: Postgres | None = None

    def run(self) -> int:
        """The exit status. Everything started is undone, also after errors and Ctrl-C."""
        with contextlib.ExitStack() as undo:
            status = self._run(undo)
        return status

    def _run(self, undo: contextlib.ExitStack) -> int:
        # Undone in reverse order: the status line, then the pool (and the workers using
        # it), then the cluster. A stop request is honoured between the steps.
        undo.callback(self._close_cluster)
        self._start_cluster()
        if self._interrupted():
            return self.stop.exit_code
        undo.callback(self._close_pool)
        self._start_pool()
        if self._interrupted():
            return self.stop.exit_code
        ticker = Ticker(self.console, self._status_line, 0.25 if self.console.live else 1.0)
        undo.callback(ticker.stop)
        # A backstop only: the workers are told to stop long before this deadline.
        self.workload.start(time.monotonic() + self.args.seconds + RECOVERY_GRACE + 5)
        self.t0 = time.monotonic()
        self.meter.update(self.t0, 0, 0)  # so that the first status line has a base
        ticker.start()
        self._drive()
        ticker.stop()
        self._interrupted()
        self.workload.stop(JOIN_TIMEOUT)
        return self._report()

    # -- the steps ------------------------------------------------------------------------

    def _start_cluster(self) -> None:
        say = self.console.say
        say("Starting PostgreSQL on 127.0.0.1: a primary, 2 streaming standbys (synchronous).")
        began = time.monotonic()
        self.cluster.start()
        say(f"  data directory: {self.cluster.root} (removed at exit)")
        for node in self.cluster.nodes:
            say(f"  {node.name}  {node.role:<8} {node.host}:{node.port}  pid {node.pid}")
        say(f"  up in {time.monotonic() - began:.1f} s")

    def _start_pool(self) -> None:
        self.factory = Postgres(self.cluster.multi_host_dsn())
        self.pool = qdbpool.initialize(qdbpool.SingletonPool(self.factory))
        self.console.say(f"Pool: SingletonPool over {self.factory!r}")
        self.factory.ready(1, 2, timeout=READY_TIMEOUT)
        with self.pool.connect() as conn:
            conn.execute(CREATE_TABLE)
            conn.commit()
        self.cluster.wait_replicated()  # the first reads on the replicas need the table

    def _drive(self) -> None:
        args, t0, stop = self.args, self.t0, self.stop
        threads = f"{args.threads} thread" + ("s" if args.threads != 1 else "")
        self.console.say(
            f"Running {threads} for {args.seconds:g} s; the primary dies at"
            f" {args.kill_at:.1f} s. Ctrl-C stops early."
        )
        if stop.sleep_until(t0 + args.kill_at):
            return
        self._fail_over()
        end = t0 + args.seconds
        if self.failover.new is not None:
            if stop.sleep_until(end, done=self._recovered):
                return
            if not self._recovered():
                self._event(f"still no write on the new primary; waiting {RECOVERY_GRACE:g} s more")
                if stop.sleep_until(end + RECOVERY_GRACE, done=self._recovered):
                    return
            recovery = self.failover.recovery(self.workload)
            if recovery is not None:
                self._event(
                    f"writes are back: first one acknowledged {recovery:.3f} s after the kill"
                )
        stop.sleep_until(end)

    def _fail_over(self) -> None:
        old = self.cluster.primary
        self.failover.old = old
        self._event(
            f"FAILOVER: SIGKILL to the primary {where(old)}, pid {old.pid}, and its children"
        )
        self.failover.killed_at = killed_at = time.monotonic()
        try:
            new = self.cluster.failover(timeout=FAILOVER_TIMEOUT)
        except Exception as exc:
            self.failover.error = f"{type(exc).__name__}: {exc}"
            self._event(f"!!! the failover failed: {self.failover.error}")
            return
        self.failover.took = time.monotonic() - killed_at
        self.failover.new = new
        others = ", ".join(node.name for node in self.cluster.standbys) or "no standby"
        self._event(
            f"{where(new)} promoted {self.failover.took:.2f} s after the kill; {others} follows"
            " it. The pool was told nothing."
        )

    def _report(self) -> int:
        intact = summarize(
            self.console.say,
            cluster=self.cluster,
            workload=self.workload,
            failover=self.failover,
            pool_primaries=self._pool_primaries(),
            ran=time.monotonic() - self.t0,
            interrupted=self.stop.requested,
        )
        if not intact:
            return 1
        if self.stop.requested:
            return self.stop.exit_code
        return 0 if self._recovered() else 1

    # -- cleanup --------------------------------------------------------------------------

    def _close_pool(self) -> None:
        self.workload.stop(0)  # no new calls; failures from here on are ours, not counted
        if self.pool is not None:
            # Wakes a worker waiting for a primary, and interrupts one stuck on a dead host.
            self.pool.close(timeout=1.0)
        elif self.factory is not None:
            self.factory.close()
        if not self.workload.stop(JOIN_TIMEOUT):
            self.console.say("!!! a worker thread did not stop in time")

    def _close_cluster(self) -> None:
        root = self.cluster.root if self.cluster.nodes else None  # None: never started
        self.cluster.close()
        if root is None:
            return
        left = [node.name for node in self.cluster.nodes if node.running]
        if left or root.exists():
            self.console.say(
                f"!!! cleanup incomplete: running {left}; {root} exists: {root.exists()}"
            )
        else:
            self.console.say(f"Cleaned up: pool closed, every server stopped, {root} removed.")

    # -- what the status line and the summary show ---------------------------------------

    def _interrupted(self) -> bool:
        """Whether a stop was requested (and if so, say that it is being honoured)."""
        if self.stop.requested:
            self.console.say(
                f"{self.stop.name} received: stopping; everything started is shut down"
            )
        return self.stop.requested

    def _event(self, text: str) -> None:
        self.console.say(f">>> {time.monotonic() - self.t0:5.1f}s  {text}")

    def _recovered(self) -> bool:
        return self.failover.recovery(self.workload) is not None

    def _pool_primaries(self) -> list[int]:
        """The ports of the hosts the pool's factory currently takes for primaries."""
        assert self.factory is not None
        return [s.address.port for s in self.factory.hosts() if s.role is Role.PRIMARY]

    def _status_line(self) -> str:
        now = time.monotonic()
        totals = self.workload.totals()
        writes, reads = self.meter.update(now, totals.writes_ok, totals.reads_ok)
        primary = primaries(self.cluster, self._pool_primaries())
        return (
            f"{now - self.t0:5.1f}s  writes {writes:4.0f}/s  reads {reads:4.0f}/s"
            f"  failures {totals.failures:3d}  primary {primary}  {self._marker()}"
        ).rstrip()

    def _marker(self) -> str:
        failover = self.failover
        if failover.killed_at is None:
            return ""
        if failover.error is not None:
            return "<< FAILOVER FAILED"
        recovery = failover.recovery(self.workload)
        if recovery is None:
            return "<< FAILOVER: waiting for a new primary"
        at = failover.killed_at - self.t0
        return f"[failover at {at:.1f}s, writes back after {recovery:.2f}s]"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo_ha.py", description="A live PostgreSQL failover under @qdbpool.with_conn."
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="run time (default 12)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=None,
        help="when the primary dies, in seconds into the run (default: a third of the run)",
    )
    args = parser.parse_args(argv)
    if args.seconds < 2:
        parser.error("--seconds must be at least 2")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.kill_at is None:
        args.kill_at = args.seconds / 3
    if not 0 < args.kill_at < args.seconds:
        parser.error("--kill-at must be within the run")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopRequest()
    stop.install()  # first: a Ctrl-C during start-up must not leave servers behind either
    console = Console()
    logging.getLogger("qdbpool").addHandler(LogToConsole(console))
    logging.getLogger("qdbpool").setLevel(logging.INFO)
    password = os.environ.get(PASSWORD_ENV) or secrets.token_urlsafe(16)
    try:
        cluster = PostgresCluster(
            standbys=2, user="demo", password=password, dbname="demo", settings=SYNC_SETTINGS
        )
        return Demo(args, cluster, console, stop).run()
    except ServerUnavailable as exc:
        print(f"demo-ha: cannot run: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if stop.requested:  # e.g. Ctrl-C also reached initdb, which then failed
            why = f"{type(exc).__name__} in the step it cut short"
            print(f"demo-ha: stopped by {stop.name} ({why})", file=sys.stderr)
            return stop.exit_code
        traceback.print_exc()
        print(f"demo-ha: failed: {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
