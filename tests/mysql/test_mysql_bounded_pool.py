"""BoundedPool over the MySQL factory, against a real MariaDB server: what the server sees.

Server-side session counts come from information_schema.PROCESSLIST for the app user. The
factory's monitor also logs in as that user (one probe session per host); the tests tell
pool sessions from it by the ids user code saw through CONNECTION_ID().
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

import qdbpool
from qdbpool.factories.mysql import MySQL
from qdbpool.testing.mariadb import MariaDBServer

pytestmark = [pytest.mark.mariadb, pytest.mark.timeout(90)]

WAIT = 30.0


@pytest.fixture
def pool_of(
    server: MariaDBServer, app_dsn: Callable[[Any], str], make_pool: Callable[..., Any]
) -> Callable[..., qdbpool.BoundedPool]:
    """A global BoundedPool over MySQL(app DSN); the pool closes its factory."""

    def make(**kwargs: Any) -> qdbpool.BoundedPool:
        pool = make_pool(MySQL(app_dsn(server)), pool_cls=qdbpool.BoundedPool, **kwargs)
        qdbpool.initialize(pool)
        return pool

    return make


def _run_threads(n: int, target: Callable[[int], None], timeout: float = WAIT) -> list[str]:
    """Run target(i) in n threads; return the errors they raised (as text)."""
    errors: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + timeout
    for w in workers:
        w.join(max(deadline - time.monotonic(), 0.0))
    stuck = sum(w.is_alive() for w in workers)
    assert stuck == 0, f"{stuck} thread(s) still running after {timeout}s; errors: {errors[:5]}"
    return errors


# ------------------------------------------------------------------ many threads


def test_64_threads_are_all_served_by_at_most_max_size_sessions(
    server: MariaDBServer,
    pool_of: Callable[..., qdbpool.BoundedPool],
    sessions_of: Callable[[MariaDBServer], set[int]],
) -> None:
    pool = pool_of(size=4, max_size=8, timeout=WAIT)
    calls_per_thread = 10
    seen_ids: set[int] = set()
    served: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(64, timeout=WAIT)

    @qdbpool.with_conn
    def work(conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID(), SLEEP(0.002)")
            (cid, _) = cur.fetchone()
        return int(cid)

    def thread_body(_: int) -> None:
        start.wait()
        for _ in range(calls_per_thread):
            cid = work()
            with lock:
                seen_ids.add(cid)
                served.append(cid)

    samples: list[tuple[set[int], int, int]] = []  # (server sessions, pool open, in use)
    stop = threading.Event()

    def sample() -> None:
        for _ in range(100_000):  # bounded; stopped long before
            if stop.is_set():
                return
            stats = pool.stats()
            samples.append((sessions_of(server), stats.open, stats.in_use))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        errors = _run_threads(64, thread_body)
    finally:
        stop.set()
        sampler.join(WAIT)

    assert errors == []
    assert len(served) == 64 * calls_per_thread  # every call was served
    assert len(samples) > 10
    max_server = max(len(ids & seen_ids) for ids, _, _ in samples)
    max_open = max(open_ for _, open_, _ in samples)
    assert max_server <= 8, f"the server saw {max_server} pool sessions at once"
    assert max_open <= 8
    assert max(in_use for _, _, in_use in samples) == 8  # the burst really happened
    stats = pool.stats()
    assert stats.open <= 8 and stats.in_use == 0 and stats.timeouts == 0
    assert stats.created == len(seen_ids)


def test_pool_serves_at_full_capacity_after_1000_lost_connections(
    server: MariaDBServer,
    app_dsn: Callable[[Any], str],
    make_pool: Callable[..., Any],
    sessions_of: Callable[[MariaDBServer], set[int]],
) -> None:
    # PyMySQL's default (TLS "preferred") builds a fresh SSLContext for every connection,
    # ~20 ms of CPU each: a thousand reconnects would eat this suite's whole time budget.
    pool = make_pool(
        MySQL(app_dsn(server) + "?ssl_disabled=true"),
        pool_cls=qdbpool.BoundedPool,
        size=4,
        max_size=8,
        timeout=WAIT,
    )
    qdbpool.initialize(pool)
    kills_per_thread, threads = 125, 8
    unexpected: list[str] = []

    @qdbpool.with_conn
    def kill_own_session(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (cid,) = cur.fetchone()
            cur.execute(f"KILL CONNECTION {int(cid)}")  # the server ends this very session

    def thread_body(_: int) -> None:
        for _ in range(kills_per_thread):
            try:
                kill_own_session()
            except pymysql.err.OperationalError:
                pass  # expected: the session is gone
            else:
                unexpected.append("a killed session did not raise")

    assert _run_threads(threads, thread_body, timeout=60) == []
    assert unexpected == []
    stats = pool.stats()
    assert stats.discarded >= threads * kills_per_thread
    assert stats.open <= 8 and stats.in_use == 0 and stats.waiting == 0
    assert stats.created == stats.closed + stats.open

    # Full capacity: max_size callers at once, each with its own live session.
    together = threading.Barrier(8, timeout=WAIT)
    held: list[int] = []
    lock = threading.Lock()

    @qdbpool.with_conn
    def hold_one(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (cid,) = cur.fetchone()
        with lock:
            held.append(int(cid))
        together.wait()  # all 8 are checked out at this point
        with lock:
            if len(held) == 8 and not unexpected:
                live = sessions_of(server)
                unexpected.extend(f"session {c} not on the server" for c in held if c not in live)

    assert _run_threads(8, lambda _: hold_one()) == []
    assert len(set(held)) == 8
    assert unexpected == []
    stats = pool.stats()
    assert stats.open <= 8 and stats.in_use == 0 and stats.timeouts == 0


# ------------------------------------------------------------------ with_conn


def test_initialize_bounded_pool_serves_with_conn(
    server: MariaDBServer, pool_of: Callable[..., qdbpool.BoundedPool]
) -> None:
    pool = pool_of(size=2)
    assert qdbpool.instance() is pool

    @qdbpool.with_conn(arg="conn")
    def whoami(*, conn: Any) -> str:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            return str(cur.fetchone()[0])

    assert whoami() == "app@%"
    assert pool.stats().checkouts == 1


def test_nested_with_conn_shares_one_server_session(
    server: MariaDBServer,
    pool_of: Callable[..., qdbpool.BoundedPool],
    session_id: Callable[..., int],
) -> None:
    pool = pool_of(size=2)

    @qdbpool.with_conn
    def outer(conn: Any) -> tuple[int, int, int]:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (mine,) = cur.fetchone()
        return int(mine), session_id(), pool.stats().in_use

    mine, inner, in_use = outer()
    assert inner == mine
    assert in_use == 1


# ------------------------------------------------------------------ fork


def _child(pool: qdbpool.BoundedPool, write_fd: int) -> None:
    """Runs in the forked child: report the session id it gets, then exit at once."""
    code = 1
    try:
        with pool.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (cid,) = cur.fetchone()
        os.write(write_fd, f"ok {cid}\n".encode())
        code = 0
    except BaseException as exc:
        os.write(write_fd, f"error {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _reap(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        select.select([], [], [], 0.02)  # poll the child's exit, bounded by the deadline
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs fork")
def test_forked_child_gets_fresh_sessions_and_the_parent_keeps_its_own(
    server: MariaDBServer,
    pool_of: Callable[..., qdbpool.BoundedPool],
    sessions_of: Callable[[MariaDBServer], set[int]],
    session_id: Callable[..., int],
) -> None:
    pool = pool_of(size=2)
    parent_session = session_id()  # idle in the pool when we fork
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            _child(pool, write_fd)
        os.close(write_fd)
        report = _read_line(read_fd, WAIT)
        code = _reap(pid, WAIT)
    finally:
        os.close(read_fd)
    assert code == 0, report
    kind, child_session = report.split()
    assert kind == "ok"
    assert int(child_session) != parent_session
    # The child never used nor closed the parent's session: it is alive and still ours.
    assert parent_session in sessions_of(server)
    assert session_id() == parent_session
    assert pool.stats().discarded == 0
